r"""Flow-map sampling: $K$ jumps along the probability-flow ODE with a flow map $\Phi(x, t, s)$
(`scoresde.models.FlowMapModel`): $x_{t_{i+1}} = \Phi(x_{t_i}, t_i, t_{i+1})$ on the grid $T = t_0 > \dots > t_K$.
No noise is added between the jumps (unlike multistep consistency sampling): because the map composes,
$\Phi(\Phi(x, t, r), r, s) = \Phi(x, t, s)$ for the exact map, more jumps follow the ODE more closely and never
re-noise what the last one found. A grid of K steps costs K evaluations.
"""

from __future__ import annotations

from torch import Tensor

from .base import Sampling, register_sampler

__all__ = ["flow_map"]


@register_sampler("flow_map", steps=1, schedule="edm", model="flow_map")
def flow_map(run: Sampling, x: Tensor, grid: Tensor) -> Tensor:
    r"""$x \leftarrow \Phi(x, t_i, t_{i+1})$ over ``grid`` (module docstring): NFE = number of steps. ``score_fn``
    must declare a flow map (``scoresde distill --method flow_map``, a ``flow_map_training`` run): checked by
    `sample`."""
    times, t_values = run.times(grid, x), grid.tolist()
    run.record(t_values[0], x)
    for i in range(len(t_values) - 1):
        x = run.score.map(x, times[i].expand(x.shape[0]), times[i + 1].expand(x.shape[0]))
        run.record(t_values[i + 1], x)
    return x
