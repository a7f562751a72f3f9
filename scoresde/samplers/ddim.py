r"""DDIM (Song, Meng & Ermon 2021) in the Gaussian-perturbation view $x_t = \alpha(t)x_0 + \sigma(t)\epsilon$: each
model evaluation becomes Tweedie's data prediction $\hat x_0 = (x + \sigma^2 s_\theta)/\alpha$ and
$\hat\epsilon = -\sigma s_\theta$, so it runs unchanged on VP, sub-VP and VE, on any grid it is handed."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_positive, expand_to
from ..processes.reverse_variance import ChainStep, ScoreMoments, check_variance, reverse_variance
from .base import Sampling, register_sampler
from .coefficients import grid_coefficients

__all__ = ["ddim", "ddim_update"]


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
    alphas, sigmas = grid_coefficients(run, grid)
    sigmas_ts = run.sde.transition(grid[:-1], grid[1:])[1].tolist()  # sigma_{t|s} of each step

    def step(i: int, x: Tensor, t: Tensor, _: Tensor) -> Tensor:
        x0 = run.x0_hat(x, t)
        eps_hat = (x - alphas[i] * x0) / sigmas[i]
        s_s = sigmas[i + 1]
        c = min(eta * sigmas_ts[i] * s_s / sigmas[i], s_s)
        keep = math.sqrt(s_s**2 - c**2)
        x = alphas[i + 1] * x0 + keep * eps_hat
        std = torch.full_like(t, c)
        if variance == "analytic":
            k = alphas[i + 1] - keep * alphas[i] / sigmas[i]
            chain = ChainStep(a=torch.full_like(t, k), b=torch.full_like(t, keep / sigmas[i]), beta=std**2,
                              beta_tilde=std**2, noise_ratio=torch.full_like(t, (sigmas[i] / alphas[i]) ** 2),
                              sigma_t2=torch.full_like(t, sigmas[i] ** 2))  # fmt: skip
            std = reverse_variance("analytic", chain, gamma=moments.at(run.sde, t), data_range=data_range).sqrt()
        if variance == "analytic" or c > 0:
            x = x + expand_to(std, x) * run.noise_like(x)
        return x

    return run.integrate(x, grid, step, "ddim", denoise)


def ddim_update(x: Tensor, x0: Tensor, alpha_t, alpha_s, sigma_ratio) -> Tensor:
    r"""DDIM's deterministic step ($\eta = 0$; the probability-flow ODE's first-order exponential integrator) from
    ``x`` at $t$ to $s$ given the denoised $\hat x_0$: $x_s = \alpha_s\hat x_0 + \frac{\sigma_s}{\sigma_t}
    (x - \alpha_t\hat x_0)$ (``sigma_ratio`` $= \sigma_s/\sigma_t$; coefficients floats or broadcastable)."""
    return alpha_s * x0 + sigma_ratio * (x - alpha_t * x0)
