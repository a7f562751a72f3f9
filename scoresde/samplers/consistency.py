r"""Multistep consistency sampling (Song, Dhariwal, Chen & Sutskever 2023, Algorithm 1).

With a consistency function $f(x, t)$ (`scoresde.training.distillation.ConsistencyModel`: the end at $t_{min}$ of the
probability-flow trajectory through $x$ at $t$): $\hat x = f(x_T, T)$, then for each further time $\tau$ of the grid
(its last point, $t_{min}$, excepted) the estimate is noised back, $x_\tau = \alpha_{\tau|t_{min}}\hat x +
\sigma_{\tau|t_{min}} z$, and mapped again, $\hat x = f(x_\tau, \tau)$. A grid of K steps costs K evaluations.
"""

from __future__ import annotations

from torch import Tensor

from .._checks import expand_to
from .base import Sampling, register_sampler

__all__ = ["consistency"]


@register_sampler("consistency", steps=1, schedule="edm", model="consistency")
def consistency(run: Sampling, x: Tensor, grid: Tensor) -> Tensor:
    r"""Multistep consistency sampling on ``grid`` (module docstring): NFE = number of steps. ``score_fn`` must be a
    consistency model (``scoresde distill --method consistency``): declared by the registry, checked by `sample`."""
    times, t_values = run.times(grid, x), grid.tolist()
    t_end = times[-1].expand(x.shape[0])
    run.record(t_values[0], x)
    x_hat = run.score(x, times[0].expand(x.shape[0]))
    for i in range(1, len(t_values) - 1):
        t = times[i].expand(x.shape[0])
        alpha, sigma = run.sde.transition(t, t_end)
        x = expand_to(alpha, x_hat) * x_hat + expand_to(sigma, x_hat) * run.noise_like(x_hat)
        run.record(t_values[i], x)
        x_hat = run.score(x, t)
    run.record(0.0, x_hat)
    return x_hat
