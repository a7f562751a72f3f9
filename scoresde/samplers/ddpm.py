r"""DDPM's ancestral chain on any grid, with a choice of reverse variance (`scoresde.processes.reverse_variance`).

From ``t`` to ``s < t``: $x_s = a\,\hat x_0 + b\,x_t + \sqrt\Sigma\,z$ with Tweedie's $\hat x_0$; on a grid of ``K``
steps this is the strided sub-chain with respaced betas (Nichol & Dhariwal 2021), so "fewer steps" is ``steps``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import expand_to
from ..processes.reverse_variance import (
    ScoreMoments,
    chain_step,
    check_variance,
    learned_variance_fraction,
    reverse_variance,
)
from .base import Sampling, register_sampler

__all__ = ["ddpm"]


@register_sampler("ddpm", steps=100, schedule="uniform", constraint=True)
def ddpm(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    variance: str = "beta_tilde",
    moments: ScoreMoments | None = None,
    data_range: tuple[float, float] | None = None,
    denoise: bool = True,
) -> Tensor:
    r"""Ancestral sampling (DDPM, Ho et al. 2020) with the reverse variance ``variance``: ``beta_tilde`` (the
    posterior's, default: the ``ancestral_sampling`` predictor's step), ``beta``, ``learned`` (Improved DDPM: the
    network's own variance channel, read from the same evaluation as the score) or ``analytic`` (Analytic-DPM:
    needs ``moments``, the run's table of $\Gamma_t$; ``data_range`` tightens its bound). NFE = ``K + denoise``."""
    check_variance(variance, moments)
    fraction_fn = learned_variance_fraction(run.score) if variance == "learned" else None

    def step(i: int, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        chain = chain_step(run.sde, t, s)
        x0 = run.x0_hat(x, t)
        gamma = moments.at(run.sde, t) if moments is not None and variance == "analytic" else None
        fraction = fraction_fn(x, t) if fraction_fn is not None else None
        var = reverse_variance(variance, chain, gamma=gamma, fraction=fraction, data_range=data_range)
        mean = expand_to(chain.a, x) * x0 + expand_to(chain.b, x) * x
        return mean + expand_to(torch.sqrt(var), x) * run.noise_like(x)

    return run.integrate(x, grid, step, "ddpm", denoise)
