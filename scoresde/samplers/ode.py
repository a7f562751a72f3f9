r"""The probability-flow ODE (Song et al. 2021, Eq. 13) and its black-box solution with torchdiffeq or scipy.

$$\frac{dx}{dt} = f(t)\,x - \tfrac12 g(t)^2\, s_\theta(x, t).$$

In the log-SNR $\lambda(t) = \log(\alpha^2/\sigma^2)$, with $d\lambda/dt = -g^2/\sigma^2$
(which follows from $d\log\alpha/dt = f$ and $d\sigma^2/dt = 2f\sigma^2 + g^2$),

$$\frac{dx}{d\lambda} = -\frac{\sigma^2}{g^2}\, f\, x + \tfrac12 \sigma^2\, s_\theta(x, t(\lambda)),$$

a far less stiff field near the data end for VP and sub-VP (the sampler offers both; the likelihood
module measures both).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive, expand_to
from ..sde import SDE, ScoreFn
from .base import Sampling, register_sampler
from .grids import check_eps, time_grid

__all__ = ["ProbabilityFlow", "ode_sampler", "ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "VARIABLES"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")
VARIABLES = ("t", "log_snr")


class ProbabilityFlow:
    r"""The probability-flow ODE's vector field in time ``variable`` ``"t"`` or ``"log_snr"``.

    ``velocity(u, x)`` is $dx/du$ at ``u`` (a time, or a log-SNR value); `span` gives the
    integration interval from the prior end ``T`` to ``eps`` in that variable; `time` maps ``u``
    back to ``t``; `rate` is $dt/du$ (1 for ``"t"``), which the likelihood needs to turn a
    divergence in t into one in u.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, variable: str = "t") -> None:
        self.sde = sde
        self.score_fn = score_fn
        self.variable = check_in_registry("ODE time variable", variable, VARIABLES)
        ends = torch.tensor([sde.T, 0.0], dtype=torch.float64)
        self._u_range = (0.0, sde.T) if variable == "t" else tuple(sde.log_snr(ends).tolist())

    def span(self, eps: float) -> tuple[float, float]:
        """``(u(T), u(eps))``: the interval from the prior to the data end."""
        if self.variable == "t":
            return self.sde.T, eps
        lam = self.sde.log_snr(torch.tensor([self.sde.T, eps], dtype=torch.float64))
        return float(lam[0]), float(lam[1])

    def time(self, u: Tensor) -> Tensor:
        """The time ``t`` at ``u``."""
        return u if self.variable == "t" else self.sde.t_from_log_snr(u)

    def rate(self, t: Tensor) -> Tensor:
        r"""$dt/du$: 1 in t, $-\sigma(t)^2 / g(t)^2$ in the log-SNR."""
        if self.variable == "t":
            return torch.ones_like(t)
        g2 = self.sde.sde(torch.ones_like(t)[:, None], t)[1] ** 2
        return -self.sde.sigma(t) ** 2 / g2

    def velocity(self, u: Tensor, x: Tensor) -> Tensor:
        """$dx/du$ for a batch ``x [B, ...]`` at a scalar ``u``.

        ``u`` is clamped to the SDE's range: adaptive solvers probe a trial point past the end of the
        interval when they choose their first step."""
        u = u.reshape(()).to(x.dtype).clamp(*self._u_range)
        t = self.time(u).expand(x.shape[0])
        drift, _ = self.sde.reverse(self.score_fn, probability_flow=True).sde(x, t)
        return drift if self.variable == "t" else expand_to(self.rate(t), x) * drift


def _check_method(method: str, backend: str) -> str:
    if backend == "scipy":
        return check_in_registry("scipy solve_ivp method", method, SCIPY_METHODS)
    return check_in_registry("torchdiffeq method", method, ADAPTIVE_METHODS + FIXED_GRID_METHODS)


def _solve_scipy(flow: ProbabilityFlow, x: Tensor, us: Tensor, method: str, rtol: float, atol: float) -> Tensor:
    """``solve_ivp`` on the flattened state, as the reference implementation does; returns ``[len(us), B, ...]``."""
    from scipy.integrate import solve_ivp

    shape = x.shape

    def rhs(u: float, y: np.ndarray) -> np.ndarray:
        state = torch.as_tensor(y, dtype=x.dtype, device=x.device).reshape(shape)
        return flow.velocity(torch.tensor(u, dtype=x.dtype), state).reshape(-1).cpu().double().numpy()

    sol = solve_ivp(rhs, (float(us[0]), float(us[-1])), x.reshape(-1).cpu().double().numpy(), method=method,
                    rtol=rtol, atol=atol, t_eval=us.tolist())
    if not sol.success:
        raise RuntimeError(f"scipy solve_ivp ({method}) failed: {sol.message}")
    ys = torch.as_tensor(sol.y.T, dtype=x.dtype, device=x.device)
    return ys.reshape((len(us),) + tuple(shape))


def solve_flow(flow: ProbabilityFlow, x: Tensor, us: Tensor, method: str, rtol: float, atol: float, backend: str,
               func: Callable[[Tensor, Tensor], Tensor] | None = None) -> Tensor:
    """Integrate ``func`` (default: the flow's velocity) from ``us[0]`` through ``us``; states ``[len(us), ...]``."""
    if backend == "scipy":
        return _solve_scipy(flow, x, us, method, rtol, atol)
    from torchdiffeq import odeint

    us = us.to(device=x.device, dtype=x.dtype)
    # adaptive steps end exactly at the last time instead of stepping past it and interpolating back
    options = {"step_t": us[-1:]} if method in ADAPTIVE_METHODS else None
    return odeint(func or flow.velocity, x, us, method=method, rtol=rtol, atol=atol, options=options)


@register_sampler("ode")
def ode_sampler(
    run: Sampling,
    x: Tensor,
    *,
    steps: int | None = None,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    eps: float | None = None,
    denoise: bool = True,
    variable: str = "t",
    backend: str = "torchdiffeq",
    schedule: str = "uniform",
) -> Tensor:
    r"""Integrate the probability-flow ODE from ``T`` to ``eps`` with torchdiffeq's ``odeint`` (any method:
    adaptive ``dopri5`` by default with ``rtol`` / ``atol``, or fixed-grid ``euler``, ``rk4``, ...) or, with
    ``backend="scipy"``, scipy's ``solve_ivp`` (``method="RK45"``, the reference implementation's choice).

    ``steps``: for fixed-grid methods, the number of steps on the ``schedule`` grid (default 100); for
    adaptive ones, the number of intervals of the returned trajectory (default 1). ``variable``: integrate
    in ``"t"`` or in ``"log_snr"``. NFE: every evaluation the solver made, plus ``denoise``."""
    check_in_registry("ODE backend", backend, ("torchdiffeq", "scipy"))
    method = _check_method(method, backend)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    eps = check_eps(run.sde, eps)
    fixed = backend == "torchdiffeq" and method in FIXED_GRID_METHODS
    grid = time_grid(run.sde, steps if steps is not None else (100 if fixed else 1), schedule, eps)
    steps = len(grid) - 1
    flow = ProbabilityFlow(run.sde, run.score, variable)
    us = grid if variable == "t" else run.sde.log_snr(grid)
    states = solve_flow(flow, x, us, method, rtol, atol, backend)
    for t, state in zip(grid.tolist(), states):
        run.record(t, state)
    return run.finish(states[-1], float(grid[-1]), denoise)
