r"""The probability-flow ODE (Song et al. 2021, Eq. 13) and its black-box solution with torchdiffeq or scipy.

$$\frac{dx}{dt} = f(t)\,x - \tfrac12 g(t)^2\, s_\theta(x, t).$$

In the log-SNR $\lambda(t) = \log(\alpha^2/\sigma^2)$, with $d\lambda/dt = -g^2/\sigma^2$
(which follows from $d\log\alpha/dt = f$ and $d\sigma^2/dt = 2f\sigma^2 + g^2$),

$$\frac{dx}{d\lambda} = -\frac{\sigma^2}{g^2}\, f\, x + \tfrac12 \sigma^2\, s_\theta(x, t(\lambda)),$$

a far less stiff field near the data end for VP and sub-VP (the sampler offers both; the likelihood
module measures both). The field is `scoresde.processes.reverse.ProbabilityFlow`, the reverse SDE's ODE form.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive
from ..processes.reverse import VARIABLES, ProbabilityFlow
from .base import Sampling, register_sampler

__all__ = ["ProbabilityFlow", "ode_sampler", "ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "VARIABLES"]

ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_GRID_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams", "implicit_adams")
SCIPY_METHODS = ("RK45", "RK23", "DOP853", "Radau", "BDF", "LSODA")


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

    sol = solve_ivp(
        rhs,
        (float(us[0]), float(us[-1])),
        x.reshape(-1).cpu().double().numpy(),
        method=method,
        rtol=rtol,
        atol=atol,
        t_eval=us.tolist(),
    )
    if not sol.success:
        raise RuntimeError(f"scipy solve_ivp ({method}) failed: {sol.message}")
    ys = torch.as_tensor(sol.y.T, dtype=x.dtype, device=x.device)
    return ys.reshape((len(us),) + tuple(shape))


def solve_flow(
    flow: ProbabilityFlow,
    x: Tensor | tuple[Tensor, ...],
    us: Tensor,
    method: str,
    rtol: float,
    atol: float,
    backend: str,
    func: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Integrate ``func`` (default: the flow's velocity) from ``us[0]`` through ``us``; states ``[len(us), ...]``."""
    if backend == "scipy":
        return _solve_scipy(flow, x, us, method, rtol, atol)
    from torchdiffeq import odeint

    first = x[0] if isinstance(x, tuple) else x
    us = us.to(device=first.device, dtype=first.dtype)
    # adaptive steps end exactly at the last time instead of stepping past it and interpolating back
    options = {"step_t": us[-1:]} if method in ADAPTIVE_METHODS else None
    func = func or flow.velocity
    low, high = torch.aminmax(us)

    def inside(u: Tensor, state):
        # torchdiffeq's first-step heuristic probes u0 + 0.01 |x| / |v|, past the end of the interval when the
        # velocity at T is nearly zero (a model with the prior's exact linear tail); the flow is not defined there
        return func(u.clamp(low, high), state)

    return odeint(inside, x, us, method=method, rtol=rtol, atol=atol, options=options)


def _solve_with_density(
    run: Sampling, flow: ProbabilityFlow, x: Tensor, us: Tensor, method, rtol, atol, backend, denoise, divergence
) -> Tensor:
    """`solve_flow` with the log-density carried along (``d log p / du = -div v``); sets ``run.log_density``."""
    from ..processes.divergence import DIVERGENCES, divergence_fn, draw_probes

    if backend != "torchdiffeq" or denoise:
        raise ValueError(
            "log_density=True needs backend='torchdiffeq' and denoise=False (the density is the ODE end point's), "
            f"got backend={backend!r}, denoise={denoise}"
        )
    check_in_registry("divergence", divergence, DIVERGENCES)
    probes = draw_probes("rademacher", 1, x, run.generator) if divergence == "hutchinson" else None
    div = divergence_fn(divergence, probes)

    def augmented(u: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        v, d = flow.velocity_and_divergence(u, state[0], div)
        return v, -d

    log_p_T = run.sde.prior_logp(x).to(x.dtype)
    states, log_densities = solve_flow(flow, (x, log_p_T), us, method, rtol, atol, backend, func=augmented)
    run.log_density = log_densities[-1]
    return states


def _default_steps(options: dict) -> int:
    """100 steps for a fixed-grid method, 1 interval (start and end) for an adaptive one."""
    fixed = options.get("backend", "torchdiffeq") == "torchdiffeq" and options.get("method") in FIXED_GRID_METHODS
    return 100 if fixed else 1


@register_sampler("ode", steps=_default_steps, schedule="uniform")
def ode_sampler(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    method: str = "dopri5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    denoise: bool = True,
    variable: str = "t",
    backend: str = "torchdiffeq",
    log_density: bool = False,
    divergence: str = "exact",
) -> Tensor:
    r"""Integrate the probability-flow ODE from ``T`` to ``t_min`` with torchdiffeq's ``odeint`` (any method:
    adaptive ``dopri5`` by default with ``rtol`` / ``atol``, or fixed-grid ``euler``, ``rk4``, ...) or, with
    ``backend="scipy"``, scipy's ``solve_ivp`` (``method="RK45"``, the reference implementation's choice).

    The grid: for fixed-grid methods, the steps (default 100 uniform); for adaptive ones, the times of the
    returned trajectory (default: the two ends). ``variable``: integrate in ``"t"`` or in ``"log_snr"``.
    NFE: every evaluation the solver made, plus ``denoise``.

    ``log_density=True`` integrates each sample's log-density along the same solve (torchdiffeq only,
    ``denoise=False``: the density is that of the ODE's end point),
    $\log p_{t_{min}}(x_{t_{min}}) = \log p_T(x_T) - \int_T^{t_{min}} \nabla\cdot v\,dt$, with the SDE's prior as
    $p_T$ and the ``divergence`` ``"exact"`` or ``"hutchinson"`` (one Rademacher probe from the run's
    generator, fixed for the solve); `SampleResult.log_density` returns it."""
    check_in_registry("ODE backend", backend, ("torchdiffeq", "scipy"))
    method = _check_method(method, backend)
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    flow = ProbabilityFlow(run.sde, run.score, variable)
    us = grid if variable == "t" else run.sde.log_snr(grid)
    if log_density:
        states = _solve_with_density(run, flow, x, us, method, rtol, atol, backend, denoise, divergence)
    else:
        states = solve_flow(flow, x, us, method, rtol, atol, backend)
    t_values = grid.tolist()
    for t, state in zip(t_values, states):
        run.record(t, state)
    return run.finish(states[-1], t_values[-1], denoise)
