r"""The likelihood of a latent score model, honestly: an upper bound on bits/dim with its terms apart (LSGM, Vahdat,
Kreis & Kautz 2021).

With the autoencoder's encoder $q(z\mid x)$ and decoder $p(x\mid z)$ (a `scoresde.models.LatentCodec`, latents
scaled) and the score model's density $p(z)$ through the probability-flow ODE,

$$-\log p(x) \le \mathbb E_{q(z\mid x)}\big[\underbrace{-\log p(z)}_{\text{prior}}
+ \underbrace{\log q(z\mid x)}_{\text{encoder}} \underbrace{-\ \log p(x\mid z)}_{\text{reconstruction}}\big],$$

per dimension of $x$. The encoder term is the negative entropy of the Gaussian posterior, in closed form
$-\sum_i \log s_i - \tfrac k2\log(2\pi e)$; the prior term is exact up to the ODE solver's error (its estimate is
reported); the reconstruction term is the decoder's Gaussian integrated over each level's bin for discrete images
(`decoder_log_prob`, the first and last bins open), so the bound is on $-\log_2 P(x)$ of the discrete data, the
quantity that dequantised pixel-space bits/dim also bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .._checks import check_callable, check_finite, check_positive_int
from .._io import json_safe
from .._stats import mean_and_standard_error
from ..datasets.scalers import DataTransform
from ..processes.base import SDE
from ..processes.score import ScoreFn
from .pf_ode import log_likelihood

__all__ = ["decoder_log_prob", "latent_bits_per_dim", "LatentBoundResult", "gaussian_entropy", "LATENT_TERMS"]

LATENT_TERMS = ("prior", "encoder", "reconstruction")
"""The bound's terms, in the order of the equation (module docstring)."""


def _log_normal_interval(a: Tensor, b: Tensor, open_low: Tensor, open_high: Tensor) -> Tensor:
    r"""$\log(\Phi(b) - \Phi(a))$ for finite $a < b$, with $a$ taken as $-\infty$ where ``open_low`` and $b$ as
    $+\infty$ where ``open_high``; stable in both tails: the interval is mirrored to the side of the lower tail, where
    ``log_ndtr`` keeps its digits, and the open ends take their own branch (no infinity reaches a gradient)."""
    flip = (a + b) > 0
    lo, hi = torch.where(flip, -b, a), torch.where(flip, -a, b)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    middle = log_hi + torch.log(-torch.expm1(log_lo - log_hi))
    ends = torch.where(open_low, torch.special.log_ndtr(b), torch.special.log_ndtr(-a))
    return torch.where(open_low | open_high, ends, middle)


def decoder_log_prob(x: Tensor, mean: Tensor, scale: Tensor, transform: DataTransform | None = None) -> Tensor:
    r"""$\log p(x\mid z)$ per row ``[B]`` of a Gaussian decoder $\mathcal N(\hat x, \tau^2)$ (``mean``, ``scale``
    shaped like ``x``).

    With ``transform``, ``x`` holds integer levels $k$ and each is the bin $[\ell_k, \ell_{k+1})$ of the model range
    (``transform.to_model``): $\log P(x\mid z) = \sum_i \log\big[\Phi(\frac{\ell_{k+1} - \hat x}{\tau})
    - \Phi(\frac{\ell_k - \hat x}{\tau})\big]$, the lowest and highest bins open to $\mp\infty$ (a discrete
    probability). Without, ``x`` is continuous and this is the Gaussian density."""
    dtype = torch.float64
    mean, scale = mean.to(dtype), scale.to(dtype)
    if transform is None:
        z = (x.to(dtype) - mean) / scale
        per_dim = -0.5 * z**2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)
        return per_dim.flatten(1).sum(1)
    levels = x.to(dtype)
    lower, upper = transform.to_model(levels), transform.to_model(levels + 1)
    open_low, open_high = levels <= 0, levels >= transform.levels - 1
    return _log_normal_interval((lower - mean) / scale, (upper - mean) / scale, open_low, open_high).flatten(1).sum(1)


def gaussian_entropy(std: Tensor) -> Tensor:
    r"""$H = \sum_i \log s_i + \tfrac k2 \log(2\pi e)$ per row ``[B]`` of a diagonal Gaussian with standard deviations
    ``std [B, ...]``."""
    k = std[0].numel()
    return torch.log(std.to(torch.float64)).flatten(1).sum(1) + 0.5 * k * math.log(2 * math.pi * math.e)


@dataclass
class LatentBoundResult:
    r"""Output of `latent_bits_per_dim`: the bound and each term in bits per dimension of the data.

    Attributes:
        bpd: the bound $\mathbb E[-\log p(z) + \log q(z|x) - \log p(x|z)] / (D\ln 2)$, mean over the data.
        bpd_standard_error: its standard error over the data (each row's latent draws averaged first).
        terms: ``prior``, ``encoder``, ``reconstruction`` in bits/dim (they add up to ``bpd``).
        terms_standard_error: the standard error of each term.
        per_sample: each row's bound ``[B]`` (bits/dim).
        nfe: score evaluations of the probability-flow solves.
        integration_error: the ODE solver's error estimate on the prior term (bits/dim), None when not estimated.
        latent_dim: $k$, dimensions of a latent; ``data_dim``: $D$.
        settings: every argument that moves the number.
    """

    bpd: float
    bpd_standard_error: float
    terms: dict
    terms_standard_error: dict
    per_sample: Tensor
    nfe: int
    integration_error: float | None
    latent_dim: int
    data_dim: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        keys = ("bpd", "bpd_standard_error", "terms", "terms_standard_error", "nfe", "integration_error")
        return json_safe({**{k: getattr(self, k) for k in keys}, "latent_dim": self.latent_dim,
                          "data_dim": self.data_dim, "settings": self.settings})  # fmt: skip


def latent_bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    codec: Any,
    x: Tensor,
    transform: DataTransform | None = None,
    *,
    n_latent_draws: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    **likelihood_options: Any,
) -> LatentBoundResult:
    r"""The latent model's bound on bits/dim of ``x`` (module docstring), each term apart.

    Args:
        sde: the latent score model's forward process.
        score_fn: the latent score model (scaled latents).
        codec: the autoencoder in the scaled latent space (`scoresde.models.LatentCodec`, or any object with
            ``posterior(x) -> (mean, std)``, ``decoder_distribution(z) -> (mean, scale)``, ``dtype`` (what it
            computes in; None: any) and ``scaling_factor`` (None: none), as the linear-Gaussian oracle).
        x: integer levels ``[B, C, H, W]`` with ``transform`` (the encoder sees the levels' centres in the model
            range and the decoder term is discrete), or continuous data without (a density bound).
        transform: the data's `DataTransform`; None for continuous data.
        n_latent_draws: draws of $z \sim q(z\mid x)$ per row, averaged.
        generator: the latent draws' (and any Hutchinson probes') randomness.
        dtype: of the probability-flow solve.
        **likelihood_options: for `scoresde.likelihood.log_likelihood` (``t_min``, tolerances, ``divergence`` ...).
    """
    n_latent_draws = check_positive_int("n_latent_draws", n_latent_draws)
    check_callable("score_fn", score_fn)
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(f"x must be a tensor [B, ...], got {getattr(x, 'shape', type(x).__name__)}")
    check_finite("x", x.to(torch.float64))
    if transform is not None:
        levels = x.to(torch.float64)
        if bool((levels != levels.round()).any()) or float(levels.min()) < 0 or levels.max() > transform.levels - 1:
            raise ValueError(
                f"x must hold integer levels in [0, {transform.levels - 1}] with a transform; pass the raw images"
            )
    dim = x[0].numel()
    with torch.no_grad():
        x_in = transform.to_model(x.to(torch.float64) + 0.5) if transform is not None else x.to(torch.float64)
        mean, std = codec.posterior(x_in.to(_param_dtype(codec, dtype)))
        mean, std = mean.to(dtype), std.to(dtype)
    encoder = -gaussian_entropy(std)
    latent_dim = mean[0].numel()
    prior, recon, errors, nfe = [], [], [], 0
    for _ in range(n_latent_draws):
        z = mean + std * torch.randn(mean.shape, generator=generator, dtype=dtype).to(mean.device)
        result = log_likelihood(sde, score_fn, z, generator=generator, **likelihood_options)
        prior.append(result.nll.to(torch.float64).to(x.device))
        nfe += result.nfe
        errors.append(result.integration_error)
        with torch.no_grad():
            x_mean, x_scale = codec.decoder_distribution(z.to(_param_dtype(codec, dtype)))
        recon.append(-decoder_log_prob(x, x_mean, x_scale, transform))
    to_bits = 1.0 / (dim * math.log(2))
    parts = {
        "prior": torch.stack(prior).mean(0) * to_bits,
        "encoder": encoder.to(x.device) * to_bits,
        "reconstruction": torch.stack(recon).mean(0) * to_bits,
    }
    per_sample = sum(parts.values())
    bpd, se = mean_and_standard_error(per_sample)
    terms, terms_se = {}, {}
    for name, values in parts.items():
        terms[name], terms_se[name] = mean_and_standard_error(values)
    known = [e for e in errors if e is not None]
    integration = float(torch.stack([e.double().mean() for e in known]).mean()) * to_bits if known else None
    settings = {
        "n_latent_draws": n_latent_draws,
        "decoder": "discretised Gaussian" if transform is not None else "Gaussian density",
        "levels": None if transform is None else transform.levels,
        "scaling_factor": codec.scaling_factor,
        **json_safe(likelihood_options),
    }
    return LatentBoundResult(
        bpd=bpd,
        bpd_standard_error=se,
        terms=terms,
        terms_standard_error=terms_se,
        per_sample=per_sample.cpu(),
        nfe=nfe,
        integration_error=integration if len(known) == len(errors) else None,
        latent_dim=latent_dim,
        data_dim=dim,
        settings=settings,
    )


def _param_dtype(codec: Any, dtype: torch.dtype) -> torch.dtype:
    """The dtype the codec computes in (its declared ``dtype``: a network's parameters'), else ``dtype`` (an oracle)."""
    return codec.dtype or dtype
