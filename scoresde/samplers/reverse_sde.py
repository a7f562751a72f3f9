r"""The reverse-time SDE solved with torchsde's ``sdeint``.

torchsde integrates forward in its time, so we run the reverse SDE in $\tau = T - t$:

$$dx = -\big[f(t)x - g(t)^2 s_\theta(x, t)\big]\,d\tau + g(t)\,dW_\tau, \qquad t = T - \tau .$$

The noise $g(t)$ does not depend on ``x`` (additive noise), so Itô and Stratonovich calculus agree
and every torchsde method applies (``euler``, ``milstein``, ``srk``, ``reversible_heun``, ``midpoint``,
``heun``, ...): the SDE declares the calculus the chosen method expects.

Caveat, measured on the oracle: ``reversible_heun`` is a symmetric (time-reversible) scheme whose parasitic
mode is not damped, and the reverse SDE contracts strongly (rate $g^2/\sigma^2$), so that mode grows
and the samples diverge at any step count we tried (100-1000 steps); a warning says so.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .._checks import check_in_registry, expand_to
from ..processes.base import SDE
from ..processes.score import ScoreFn
from .base import Sampling, register_sampler

__all__ = ["sde_sampler", "SDE_METHODS"]

SDE_METHODS = ("euler", "milstein", "srk", "midpoint", "heun", "euler_heun", "reversible_heun")
_STRATONOVICH = ("midpoint", "heun", "euler_heun", "reversible_heun")
_LEVY_AREA = {"srk": "space-time"}
"""Methods that need a Lévy-area approximation from the Brownian interval."""


class _ReverseInTau(torch.nn.Module):
    """The reverse SDE in torchsde's interface: flat state ``[B, D]``, diagonal noise, ``tau = T - t``."""

    noise_type = "diagonal"

    def __init__(self, sde: SDE, score_fn: ScoreFn, shape: torch.Size, sde_type: str) -> None:
        super().__init__()
        self.sde_type = sde_type
        self.reverse = sde.reverse(score_fn)
        self.T = sde.T
        self.shape = shape

    def _t(self, tau: Tensor, y: Tensor) -> Tensor:
        return (self.T - tau).clamp(min=0.0).to(y.dtype).expand(y.shape[0])

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        return -self.reverse.drift(y.reshape(self.shape), self._t(tau, y)).reshape(y.shape)

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        return expand_to(self.reverse.diffusion(self._t(tau, y)), y).expand_as(y)


def _check_uniform(grid: Tensor) -> None:
    """torchsde steps with one fixed ``dt``: the grid must be uniform in t."""
    spacing = grid[:-1] - grid[1:]
    if float((spacing - spacing.mean()).abs().max()) > 1e-9 * float(spacing.mean()):
        raise ValueError(
            "the 'sde' sampler steps with torchsde's fixed dt, so it takes a grid uniform in t "
            "(schedule='uniform'); for other grids use 'pc' with predictor='euler_maruyama'"
        )


@register_sampler("sde", steps=1000, schedule="uniform")
def sde_sampler(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    method: str = "euler",
    denoise: bool = True,
) -> Tensor:
    r"""Solve the reverse-time SDE from ``T`` to ``t_min`` with torchsde on a uniform grid (fixed step
    $(T - t_{min})/N$; the Brownian motion is a ``BrownianInterval`` seeded from the run's generator, so a seed
    reproduces the samples). NFE: the drift evaluations the method made (1 per step for ``euler``, and the
    one torchsde's input check makes), plus ``denoise``."""
    import torchsde

    method = check_in_registry("torchsde method", method, SDE_METHODS)
    _check_uniform(grid)
    if method == "reversible_heun":
        warnings.warn(
            "torchsde's reversible_heun is unstable on the strongly contracting reverse SDE of diffusion "
            "models (its parasitic mode grows); prefer euler, milstein or srk",
            RuntimeWarning,
            stacklevel=3,
        )
    steps = len(grid) - 1
    taus = (run.sde.T - grid).to(x.dtype)
    sde_type = "stratonovich" if method in _STRATONOVICH else "ito"
    system = _ReverseInTau(run.sde, run.score, x.shape, sde_type)
    y0 = x.reshape(x.shape[0], -1)
    seed = int(
        torch.randint(
            0, 2**31 - 1, (1,), generator=run.generator, device=run.generator.device if run.generator else "cpu"
        )
    )
    bm = torchsde.BrownianInterval(
        t0=float(taus[0]),
        t1=float(taus[-1]),
        size=y0.shape,
        dtype=y0.dtype,
        device=y0.device,
        entropy=seed,
        levy_area_approximation=_LEVY_AREA.get(method, "none"),
    )
    # a step a hair longer than the grid spacing, so that round-off never adds a sliver of an extra step: the
    # margin must exceed the rounding of the times in x's dtype (1e-9 alone let float32 grids take one extra step)
    dt = float(taus[-1] - taus[0]) / steps * (1 + max(1e-9, 8 * torch.finfo(x.dtype).eps))
    options = {"grad_free": True} if method == "milstein" else None
    ys = torchsde.sdeint(system, y0, taus, bm=bm, method=method, dt=dt, options=options)
    t_values = grid.tolist()
    for t, state in zip(t_values, ys):
        run.record(t, state.reshape(x.shape))
    return run.finish(ys[-1].reshape(x.shape), t_values[-1], denoise)
