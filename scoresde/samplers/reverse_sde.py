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
from ..sde import ScoreFn, SDE
from .base import Sampling, register_sampler
from .grids import check_eps, time_grid

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
        drift, _ = self.reverse.sde(y.reshape(self.shape), self._t(tau, y))
        return -drift.reshape(y.shape)

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        diffusion = self.reverse.forward.sde(y[:, :1], self._t(tau, y))[1]
        return expand_to(diffusion, y).expand_as(y)


@register_sampler("sde")
def sde_sampler(
    run: Sampling,
    x: Tensor,
    *,
    steps: int = 1000,
    method: str = "euler",
    eps: float | None = None,
    denoise: bool = True,
) -> Tensor:
    r"""Solve the reverse-time SDE from ``T`` to ``eps`` with torchsde (fixed step ``(T - eps)/steps``;
    the Brownian motion is a ``BrownianInterval`` seeded from the run's generator, so a seed reproduces
    the samples). NFE: the drift evaluations the method made (1 per step for ``euler``), plus ``denoise``."""
    import torchsde

    method = check_in_registry("torchsde method", method, SDE_METHODS)
    if method == "reversible_heun":
        warnings.warn("torchsde's reversible_heun is unstable on the strongly contracting reverse SDE of diffusion "
                      "models (its parasitic mode grows); prefer euler, milstein or srk", RuntimeWarning, stacklevel=3)
    eps = check_eps(run.sde, eps)
    grid = time_grid(run.sde, steps, "uniform", eps)
    steps = len(grid) - 1
    taus = (run.sde.T - grid).to(x.dtype)
    sde_type = "stratonovich" if method in _STRATONOVICH else "ito"
    system = _ReverseInTau(run.sde, run.score, x.shape, sde_type)
    y0 = x.reshape(x.shape[0], -1)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=run.generator, device=run.generator.device if run.generator else "cpu"))
    bm = torchsde.BrownianInterval(
        t0=float(taus[0]), t1=float(taus[-1]), size=y0.shape, dtype=y0.dtype, device=y0.device, entropy=seed,
        levy_area_approximation=_LEVY_AREA.get(method, "none"),
    )
    # a step a hair longer than the grid spacing, so that round-off never adds a sliver of an extra step
    dt = float(taus[-1] - taus[0]) / steps * (1 + 1e-9)
    options = {"grad_free": True} if method == "milstein" else None
    ys = torchsde.sdeint(system, y0, taus, bm=bm, method=method, dt=dt, options=options)
    for t, state in zip(grid.tolist(), ys):
        run.record(t, state.reshape(x.shape))
    return run.finish(ys[-1].reshape(x.shape), float(grid[-1]), denoise)
