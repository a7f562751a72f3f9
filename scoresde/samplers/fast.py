r"""Few-step solvers through the Gaussian-perturbation view $x_t = \alpha(t)x_0 + \sigma(t)\epsilon$.

They need only ``alpha``, ``sigma``, ``log_snr`` and ``t_from_log_snr`` of the SDE, so they run unchanged
on VP, sub-VP and VE. Each model evaluation is turned into a data prediction (Tweedie)

$$\hat x_0(x, t) = \frac{x + \sigma(t)^2 s_\theta(x, t)}{\alpha(t)},
\qquad \hat\epsilon = \frac{x - \alpha(t)\hat x_0}{\sigma(t)} = -\sigma(t)\, s_\theta(x, t).$$

Each runs on the grid ``T = t_0 > ... > t_N = t_min`` it is handed (any grid works with any solver; the
registry declares each one's default); ``denoise`` adds Tweedie's $\hat x_0$ at ``t_min`` (one NFE, the same
final step as EDM's Euler step to $\sigma = 0$).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive, expand_to
from ..processes.reverse_variance import ChainStep, ScoreMoments, check_variance, reverse_variance
from .base import Sampling, register_sampler

__all__ = ["ddim", "heun", "dpm_solver", "unipc"]


def _coefficients(run: Sampling, grid: Tensor) -> tuple[list[float], list[float]]:
    """$\\alpha(t_i)$ and $\\sigma(t_i)$ on the grid, as Python floats computed in float64."""
    return run.sde.alpha(grid).tolist(), run.sde.sigma(grid).tolist()


def _multistep_coefficients(run: Sampling, grid: Tensor) -> tuple[list[float], list[float], list[float]]:
    r"""On the grid of a multistep solver: $\alpha_i$, $\sigma_i$ and $\lambda_i = \log(\alpha_i/\sigma_i)$
    (half the log-SNR), as Python floats from float64."""
    alphas, sigmas = _coefficients(run, grid)
    return alphas, sigmas, (0.5 * run.sde.log_snr(grid)).tolist()


def _multistep_order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """Order of step ``i``: warm-up (no more than the ``i + 1`` predictions so far) and, with
    ``lower_order_final``, no more than the steps left."""
    return min(order, i + 1, steps - i if lower_order_final else order)


@register_sampler("ddim", steps=50, schedule="uniform", constraint=True)
def ddim(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    eta: float = 0.0,
    denoise: bool = True,
    variance: str = "beta_tilde",
    moments: ScoreMoments | None = None,
    data_range: tuple[float, float] | None = None,
) -> Tensor:
    r"""DDIM (Song, Meng & Ermon 2021, Eq. 12) from ``t`` to ``s < t``:

    $$x_s = \alpha_s \hat x_0 + \sqrt{\sigma_s^2 - c^2}\,\hat\epsilon + \sqrt{\Sigma}\, z,
    \qquad c = \eta\,\frac{\sigma_s}{\sigma_t}\sqrt{\sigma_t^2 - \alpha_t^2\sigma_s^2/\alpha_s^2},$$

    deterministic (the probability-flow ODE's first-order exponential integrator) at ``eta = 0``,
    DDPM ancestral sampling at ``eta = 1``, with $\Sigma = c^2$ (``variance="beta_tilde"``, DDIM's own). With
    ``variance="analytic"`` (Analytic-DDIM, Bao et al. 2022) the step's mean $k\hat x_0 + \frac{\sqrt{\sigma_s^2 -
    c^2}}{\sigma_t}x_t$, $k = \alpha_s - \sqrt{\sigma_s^2 - c^2}\,\alpha_t/\sigma_t$, gets its optimal variance
    $\Sigma = c^2 + k^2\frac{\sigma_t^2}{\alpha_t^2}(1 - \sigma_t^2\Gamma_t)$ (`scoresde.processes.reverse_variance`:
    needs
    ``moments``; ``data_range`` tightens it), noise even at ``eta = 0``. Applies the run's constraint after every step
    (inpainting). NFE = ``N + denoise``."""
    eta = check_positive("eta", eta, strict=False)
    check_variance(variance, moments, ("beta_tilde", "analytic"), "DDIM variance")
    times, t_values = run.times(grid, x), grid.tolist()
    alphas, sigmas = _coefficients(run, grid)
    sigmas_ts = run.sde.transition(grid[:-1], grid[1:])[1].tolist()  # sigma_{t|s} of each step
    x = run.constrain(x, t_values[0])
    run.record(t_values[0], x)
    for i in run.steps(len(t_values) - 1, "ddim"):
        t = times[i].expand(x.shape[0])
        x0 = run.x0_hat(x, t)
        eps_hat = (x - alphas[i] * x0) / sigmas[i]
        s_s = sigmas[i + 1]
        c = min(eta * sigmas_ts[i] * s_s / sigmas[i], s_s)
        keep = math.sqrt(s_s**2 - c**2)
        x = alphas[i + 1] * x0 + keep * eps_hat
        std = torch.full_like(t, c)
        if variance == "analytic":
            k = alphas[i + 1] - keep * alphas[i] / sigmas[i]
            step = ChainStep(a=torch.full_like(t, k), b=torch.full_like(t, keep / sigmas[i]), beta=std**2,
                             beta_tilde=std**2, noise_ratio=torch.full_like(t, (sigmas[i] / alphas[i]) ** 2),
                             sigma_t2=torch.full_like(t, sigmas[i] ** 2))  # fmt: skip
            std = reverse_variance("analytic", step, gamma=moments.at(run.sde, t), data_range=data_range).sqrt()
        if variance == "analytic" or c > 0:
            x = x + expand_to(std, x) * run.noise_like(x)
        x = run.constrain(x, t_values[i + 1])
        run.record(t_values[i + 1], x)
    return run.finish(x, t_values[-1], denoise)


def ddim_update(x: Tensor, x0: Tensor, alpha_t, alpha_s, sigma_ratio) -> Tensor:
    r"""DDIM's deterministic step ($\eta = 0$; the probability-flow ODE's first-order exponential integrator) from
    ``x`` at $t$ to $s$ given the denoised $\hat x_0$: $x_s = \alpha_s\hat x_0 + \frac{\sigma_s}{\sigma_t}
    (x - \alpha_t\hat x_0)$ (``sigma_ratio`` $= \sigma_s/\sigma_t$; coefficients floats or broadcastable)."""
    return alpha_s * x0 + sigma_ratio * (x - alpha_t * x0)


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
    alphas, _ = _coefficients(run, grid)
    sig = torch.exp(-0.5 * sde.log_snr(grid)).tolist()  # sigma tilde = sigma / alpha
    gamma_max = min(s_churn / steps, math.sqrt(2.0) - 1.0)

    times, t_values = run.times(grid, x), grid.tolist()

    def slope(x_scaled: Tensor, t: Tensor, alpha: float, sigma_tilde: float) -> Tensor:
        return (x_scaled - run.x0_hat(alpha * x_scaled, t)) / sigma_tilde

    run.record(t_values[0], x)
    xs = x / alphas[0]
    for i in run.steps(steps, "heun"):
        t_hat, a_hat, sig_hat = times[i].expand(x.shape[0]), alphas[i], sig[i]
        if gamma_max > 0 and s_tmin <= sig[i] <= s_tmax:
            sig_hat = min(sig[i] * (1 + gamma_max), sig[0])
            t_churn = sde.t_from_log_snr(torch.tensor(-2.0 * math.log(sig_hat), dtype=torch.float64))
            t_hat, a_hat = run.batch_time(t_churn, x), float(sde.alpha(t_churn))
            xs = xs + s_noise * math.sqrt(max(sig_hat**2 - sig[i] ** 2, 0.0)) * run.noise_like(xs)
        d = slope(xs, t_hat, a_hat, sig_hat)
        end = (times[i + 1].expand(x.shape[0]), alphas[i + 1], sig[i + 1])
        xs = heun_update(xs, sig[i + 1] - sig_hat, d, lambda y, end=end: slope(y, *end))
        run.record(t_values[i + 1], alphas[i + 1] * xs)
    return run.finish(alphas[-1] * xs, t_values[-1], denoise)


@register_sampler("dpm_solver", steps=20, schedule="log_snr")
def dpm_solver(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    order: int = 2,
    denoise: bool = True,
    lower_order_final: bool = True,
) -> Tensor:
    r"""DPM-Solver++ multistep (Lu et al. 2022, "DPM-Solver++", Algorithm 2 and its third-order variant)
    with data prediction, in $\lambda = \log(\alpha/\sigma)$ (half the log-SNR),
    $h_i = \lambda_{i+1} - \lambda_i$, $\varphi_1 = e^{-h} - 1$:

    $$x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}\varphi_1 D_i,
    \qquad D_i = \hat x_0^{(i)} + \frac{1}{2r}\big(\hat x_0^{(i)} - \hat x_0^{(i-1)}\big),\ r = h_{i-1}/h_i$$

    for ``order = 2`` (2M); ``order = 1`` is DDIM; ``order = 3`` adds the second divided difference
    (3M). The first steps warm up with lower orders; with ``lower_order_final`` the last steps drop to the
    order the remaining steps allow, which keeps few-step runs stable. NFE = ``N + denoise``."""
    check_in_registry("dpm_solver order", str(order), ["1", "2", "3"])
    alphas, sigmas, lam = _multistep_coefficients(run, grid)
    times, t_values, steps = run.times(grid, x), grid.tolist(), len(grid) - 1
    x0s: list[Tensor] = []
    run.record(t_values[0], x)
    for i in run.steps(steps, f"dpm_solver++ {order}M"):
        x0s = (x0s + [run.x0_hat(x, times[i].expand(x.shape[0]))])[-3:]
        x = dpmpp_step(x, x0s, lam, alphas, sigmas, i, _multistep_order(order, i, steps, lower_order_final))
        run.record(t_values[i + 1], x)
    return run.finish(x, t_values[-1], denoise)


def expm1(h: float | Tensor) -> float | Tensor:
    """$e^h - 1$ of a float (``math``) or of a tensor (``torch``: differentiable)."""
    return torch.expm1(h) if isinstance(h, Tensor) else math.expm1(h)


def dpmpp_step(x: Tensor, x0s: list[Tensor], lam: list, alphas: list, sigmas: list, i: int, k: int) -> Tensor:
    """One DPM-Solver++ ``k``M step from grid point ``i`` to ``i + 1`` with the last ``k`` data predictions ``x0s``
    (see `dpm_solver`). The grid's ``lam``, ``alphas``, ``sigmas`` are floats when sampling, or 0-d tensors when a
    fit differentiates through them (`scoresde.samplers.solver_fit`): the same arithmetic either way."""
    h = lam[i + 1] - lam[i]
    phi1 = expm1(-h)
    x_next = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * phi1 * x0s[-1]
    if k >= 2:
        r0 = (lam[i] - lam[i - 1]) / h
        d1_0 = (x0s[-1] - x0s[-2]) / r0
        if k == 2:
            x_next = x_next - 0.5 * alphas[i + 1] * phi1 * d1_0
        else:
            r1 = (lam[i - 1] - lam[i - 2]) / h
            d1_1 = (x0s[-2] - x0s[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            phi2 = phi1 / h + 1.0
            phi3 = phi2 / h - 0.5
            x_next = x_next + alphas[i + 1] * phi2 * d1 - alphas[i + 1] * phi3 * d2
    return x_next


def _unipc_coefficients(rks: list[float], h: float) -> tuple[Tensor, Tensor, float, float]:
    r"""UniPC's B(h) = e^{-h} - 1 variant ("bh2") for data prediction: the matrix ``R`` (powers of the
    ratios ``r_k``), the vector ``b`` of the $\varphi$ functions, $\varphi_1 = e^{-h} - 1$ and
    $B(h)$ (Zhao et al. 2023, Algorithm 3 and Eq. 12)."""
    hh = -h
    phi1 = math.expm1(hh)
    phi_k = phi1 / hh - 1.0
    factorial = 1
    rows, b = [], []
    r = torch.tensor(rks, dtype=torch.float64)
    for k in range(1, len(rks) + 1):
        rows.append(r ** (k - 1))
        b.append(phi_k * factorial / phi1)
        factorial *= k + 1
        phi_k = phi_k / hh - 1.0 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), phi1, phi1


@register_sampler("unipc", steps=20, schedule="log_snr_warped")
def unipc(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    order: int = 2,
    denoise: bool = True,
    lower_order_final: bool = True,
    corrector: bool = True,
) -> Tensor:
    r"""UniPC (Zhao et al. 2023) with data prediction and $B(h) = e^{-h} - 1$, in
    $\lambda = \log(\alpha/\sigma)$: the multistep predictor UniP-p

    $$\tilde x_{i+1} = \frac{\sigma_{i+1}}{\sigma_i} x_i - \alpha_{i+1}\varphi_1 \hat x_0^{(i)}
    - \alpha_{i+1} B(h) \sum_k \rho^p_k D_k,
    \qquad D_k = (\hat x_0^{(i-k)} - \hat x_0^{(i)}) / r_k,$$

    then the corrector UniC, which reuses the model evaluation at $\tilde x_{i+1}$ (needed for the
    next step anyway) to raise the order by one at no extra NFE; it is skipped after the last step.
    ``order`` is UniP's order (1–3); warm-up and ``lower_order_final`` as in `dpm_solver`.
    NFE = ``N + denoise``."""
    check_in_registry("unipc order", str(order), ["1", "2", "3"])
    alphas, sigmas, lam = _multistep_coefficients(run, grid)
    times, t_values, steps = run.times(grid, x), grid.tolist(), len(grid) - 1
    x0s: list[Tensor] = []  # data predictions at grid points i - len + 1 ... i
    x_prev, k_prev = x, 1
    run.record(t_values[0], x)
    for i in run.steps(steps, f"unipc-{order}"):
        x0_new = run.x0_hat(x, times[i].expand(x.shape[0]))
        if i > 0 and corrector:
            x = _unic(x_prev, x0s, x0_new, lam, alphas, sigmas, i, k_prev)
        x0s = (x0s + [x0_new])[-order:]
        k = _multistep_order(order, i, steps, lower_order_final)
        x_prev, k_prev = x, k
        x = _unip(x, x0s, lam, alphas, sigmas, i, k)
        run.record(t_values[i + 1], x)
    return run.finish(x, t_values[-1], denoise)


def _unip(
    x: Tensor, x0s: list[Tensor], lam: list[float], alphas: list[float], sigmas: list[float], i: int, k: int
) -> Tensor:
    """UniP-k step from grid point ``i`` to ``i + 1`` (uses the last ``k`` data predictions)."""
    h = lam[i + 1] - lam[i]
    rks = [(lam[i - j] - lam[i]) / h for j in range(1, k)]
    R, b, phi1, B_h = _unipc_coefficients(rks + [1.0], h)
    x_next = (sigmas[i + 1] / sigmas[i]) * x - alphas[i + 1] * phi1 * x0s[-1]
    if k >= 2:
        rhos = [0.5] if k == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        D = [(x0s[-1 - j] - x0s[-1]) / rks[j - 1] for j in range(1, k)]
        x_next = x_next - alphas[i + 1] * B_h * sum(rho * d for rho, d in zip(rhos, D))
    return x_next


def _unic(x_prev: Tensor, x0s: list[Tensor], x0_new: Tensor, lam, alphas, sigmas, i: int, k: int) -> Tensor:
    """UniC-k: correct the state at grid point ``i`` (predicted from ``i - 1``) with the new data prediction."""
    s = i - 1
    h = lam[i] - lam[s]
    rks = [(lam[s - j] - lam[s]) / h for j in range(1, k)]
    R, b, phi1, B_h = _unipc_coefficients(rks + [1.0], h)
    rhos = [0.5] if k == 1 else torch.linalg.solve(R, b).tolist()
    D = [(x0s[-1 - j] - x0s[-1]) / rks[j - 1] for j in range(1, k)]
    x_new = (sigmas[i] / sigmas[s]) * x_prev - alphas[i] * phi1 * x0s[-1]
    correction = sum(rho * d for rho, d in zip(rhos[:-1], D)) + rhos[-1] * (x0_new - x0s[-1])
    return x_new - alphas[i] * B_h * correction
