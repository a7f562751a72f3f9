r"""UniPC (Zhao et al. 2023): the multistep predictor UniP with data prediction and $B(h) = e^{-h} - 1$ in
$\lambda = \log(\alpha/\sigma)$, and the corrector UniC that reuses the next step's model evaluation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Sampling, register_sampler
from .coefficients import multistep_coefficients, multistep_order

__all__ = ["unipc"]


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


@register_sampler("unipc", steps=20, schedule="log_snr_warped", orders=(1, 2, 3))
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
    alphas, sigmas, lam = multistep_coefficients(run, grid)
    steps = len(grid) - 1
    x0s: list[Tensor] = []  # data predictions at grid points i - len + 1 ... i
    x_prev, k_prev = x, 1

    def step(i: int, x: Tensor, t: Tensor, _: Tensor) -> Tensor:
        nonlocal x0s, x_prev, k_prev
        x0_new = run.x0_hat(x, t)
        if i > 0 and corrector:
            x = _unic(x_prev, x0s, x0_new, lam, alphas, sigmas, i, k_prev)
        x0s = (x0s + [x0_new])[-order:]
        k = multistep_order(order, i, steps, lower_order_final)
        x_prev, k_prev = x, k
        return _unip(x, x0s, lam, alphas, sigmas, i, k)

    return run.integrate(x, grid, step, f"unipc-{order}", denoise)


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
