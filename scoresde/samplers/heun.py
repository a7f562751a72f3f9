r"""EDM's Heun sampler (Karras et al. 2022, Algorithm 2) in the scaled variables $\tilde x = x/\alpha$,
$\tilde\sigma = \sigma/\alpha$, with stochastic churn; `heun_update` is its deterministic step (also the consistency
distillation teacher's)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_positive
from .base import Sampling, register_sampler
from .coefficients import grid_coefficients

__all__ = ["heun", "heun_update"]


def heun_update(y: Tensor, h, d: Tensor, slope_at_end: Callable[[Tensor], Tensor]) -> Tensor:
    r"""One Heun step of $dy/d\tilde\sigma = d(y, \tilde\sigma)$ over $h = \tilde\sigma_{next} - \tilde\sigma$
    from the slope ``d`` at the start: $y' = y + h\,d$, $y_{next} = y + h\,\tfrac12\,(d + d(y'))$ with
    ``slope_at_end(y')`` the slope at the end (EDM's Algorithm 2 without churn; the distillation teacher's step)."""
    y_euler = y + h * d
    return y + h * 0.5 * (d + slope_at_end(y_euler))


@register_sampler("heun", steps=18, schedule="edm")
def heun(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    denoise: bool = True,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
) -> Tensor:
    r"""EDM's second-order sampler (Karras et al. 2022, Algorithm 2) in the scaled variables
    $\tilde x = x/\alpha$, $\tilde\sigma = \sigma/\alpha$, where the probability-flow ODE is
    $d\tilde x/d\tilde\sigma = (\tilde x - \hat x_0)/\tilde\sigma$ for every SDE:

    $$d_i = \frac{\tilde x_i - \hat x_0(\tilde x_i, \hat\sigma_i)}{\hat\sigma_i},
    \quad \tilde x' = \tilde x_i + (\tilde\sigma_{i+1} - \hat\sigma_i)\, d_i,
    \quad \tilde x_{i+1} = \tilde x_i + (\tilde\sigma_{i+1} - \hat\sigma_i)\,\tfrac12 (d_i + d'),$$

    with stochastic churn $\hat\sigma_i = \tilde\sigma_i(1 + \gamma_i)$,
    $\gamma_i = \min(S_{churn}/N, \sqrt2 - 1)$ for $\tilde\sigma_i \in [S_{tmin}, S_{tmax}]$
    and fresh noise of std $S_{noise}\sqrt{\hat\sigma_i^2 - \tilde\sigma_i^2}$ (``s_churn = 0``:
    deterministic). NFE = ``2 N + denoise``."""
    for name, value in (("s_churn", s_churn), ("s_tmin", s_tmin), ("s_noise", s_noise)):
        check_positive(name, value, strict=False)
    if not s_tmax >= s_tmin:
        raise ValueError(f"s_tmax must be >= s_tmin = {s_tmin:g}, got {s_tmax!r}")
    sde = run.sde
    steps = len(grid) - 1
    alphas, _ = grid_coefficients(run, grid)
    sig = torch.exp(-0.5 * sde.log_snr(grid)).tolist()  # sigma tilde = sigma / alpha
    gamma_max = min(s_churn / steps, math.sqrt(2.0) - 1.0)

    def slope(x_scaled: Tensor, t: Tensor, alpha: float, sigma_tilde: float) -> Tensor:
        return (x_scaled - run.x0_hat(alpha * x_scaled, t)) / sigma_tilde

    xs = x / alphas[0]

    def step(i: int, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        nonlocal xs
        t_hat, a_hat, sig_hat = t, alphas[i], sig[i]
        if gamma_max > 0 and s_tmin <= sig[i] <= s_tmax:
            sig_hat = min(sig[i] * (1 + gamma_max), sig[0])
            t_churn = sde.t_from_log_snr(torch.tensor(-2.0 * math.log(sig_hat), dtype=torch.float64))
            t_hat, a_hat = run.batch_time(t_churn, x), float(sde.alpha(t_churn))
            xs = xs + s_noise * math.sqrt(max(sig_hat**2 - sig[i] ** 2, 0.0)) * run.noise_like(xs)
        d = slope(xs, t_hat, a_hat, sig_hat)
        end = (t_next, alphas[i + 1], sig[i + 1])
        xs = heun_update(xs, sig[i + 1] - sig_hat, d, lambda y, end=end: slope(y, *end))
        return alphas[i + 1] * xs  # the state is xs: x is what is recorded

    return run.integrate(x, grid, step, "heun", denoise)
