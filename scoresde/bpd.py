r"""Bits per dimension of discrete data: uniform dequantisation, the data transform's log-determinant, and
each sample's $-\log p_{model}$ from the exact likelihood (`scoresde.likelihood`) or one of the bounds
(`scoresde.bounds`), so that NLL and bounds are reported on the same footing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ._checks import check_finite, check_in_registry, check_positive_int
from .bounds import ddpm_bound, elbo
from .datasets.scalers import DataTransform
from .likelihood import log_likelihood
from .metrics import mean_and_standard_error
from .sde import SDE, ScoreFn

__all__ = ["bits_per_dim", "BitsPerDimResult", "ESTIMATORS"]


@dataclass
class BitsPerDimResult:
    """Output of `bits_per_dim`.

    Attributes:
        bpd: bits per dimension of the discrete data, $-\\log_2 p(y)/D$ with the scaling's
            log-determinant (the figure the literature reports), mean over samples and draws.
        bpd_standard_error: its standard error over samples (after averaging the draws of each sample).
        bpd_raw: $-\\log_2 p_{model}(x_{model})/D$ in the model's range, without the offset.
        offset: ``bpd - bpd_raw`` = $-\\log_2((b - a)/K)$ (e.g. 7 for 256 levels on [-1, 1]).
        nats_per_sample: mean $-\\log p(y)$ in nats.
        per_sample: per-sample bits/dim ``[B]`` (mean over draws).
        nfe: score evaluations over all draws.
        settings: every argument that moves the number.
    """

    bpd: float
    bpd_standard_error: float
    bpd_raw: float
    offset: float
    nats_per_sample: float
    per_sample: Tensor
    nfe: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("bpd", "bpd_standard_error", "bpd_raw", "offset", "nats_per_sample", "nfe", "settings")
        }


def bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    transform: DataTransform,
    *,
    n_dequantizations: int = 1,
    estimator: str = "ode",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    **likelihood_options,
) -> BitsPerDimResult:
    r"""Bits per dimension of integer data ``x [B, ...]`` (values ``0 .. levels-1``) under the model.

    With uniform dequantisation $y = x + u$ and the affine map to the model's range
    (`DataTransform`),

    $$\mathrm{bpd}(x) = \frac{-\log p_{model}(x_{model}) - D\log\frac{b - a}{K}}{D \ln 2},$$

    averaged over ``n_dequantizations`` draws of ``u`` (a variational bound on the discrete model's
    $-\log_2 P(x)/D$: it can only overestimate the discrete entropy). ``bpd_raw`` drops the
    log-determinant term. ``estimator`` picks the per-sample $-\log p_{model}$: ``"ode"`` (exact,
    `log_likelihood`), ``"elbo"`` (the continuous bound, `elbo`) or ``"ddpm"`` (the discrete
    chain's bound, `ddpm_bound`), so that NLL and bounds are reported on the same footing;
    ``likelihood_options`` go to that function (divergence, tolerances, t_min, prior_logp, n_times, ...) and
    are recorded in ``settings``.
    """
    check_in_registry("bits/dim estimator", estimator, ESTIMATORS)
    if not isinstance(x, Tensor) or x.ndim < 2:
        raise ValueError(
            f"x must be a tensor of integer levels with shape [B, ...], got {getattr(x, 'shape', type(x).__name__)}"
        )
    check_finite("x", x.to(torch.float64))
    levels = x.to(torch.float64)
    if bool((levels != levels.round()).any()) or float(levels.min()) < 0 or float(levels.max()) > transform.levels - 1:
        raise ValueError(
            f"x must hold integers in [0, {transform.levels - 1}] (the transform's levels); got values in "
            f"[{float(levels.min()):g}, {float(levels.max()):g}]; pass the raw discrete data, not scaled data"
        )
    n_dequantizations = check_positive_int("n_dequantizations", n_dequantizations)
    dim = x[0].numel()
    log_det = transform.log_det_per_dim()
    per_draw, raw, nfe = [], [], 0
    for _ in range(n_dequantizations):
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
        x_model = transform.to_model(levels + u).to(dtype)
        nll, calls = _per_sample_nll(estimator, sde, score_fn, x_model, generator=generator, **likelihood_options)
        nfe += calls
        raw.append(nll / (dim * math.log(2)))
        per_draw.append((nll - dim * log_det) / (dim * math.log(2)))
    per_sample = torch.stack(per_draw).mean(0)
    bpd, se = mean_and_standard_error(per_sample)
    settings = {
        "levels": transform.levels,
        "range": [transform.low, transform.high],
        "n_dequantizations": n_dequantizations,
        "dequantization": "uniform",
        "estimator": estimator,
        **{
            k: (v if isinstance(v, (int, float, str, bool, type(None))) else repr(v))
            for k, v in likelihood_options.items()
        },
    }
    return BitsPerDimResult(
        bpd=bpd,
        bpd_standard_error=se,
        bpd_raw=float(torch.stack(raw).mean()),
        offset=-log_det / math.log(2),
        nats_per_sample=bpd * dim * math.log(2),
        per_sample=per_sample,
        nfe=nfe,
        settings=settings,
    )


ESTIMATORS = ("ode", "elbo", "ddpm")
"""How `bits_per_dim` gets each sample's ``-log p_model``: the exact NLL or one of the bounds."""


def _per_sample_nll(estimator: str, *args, **kwargs) -> tuple[Tensor, int]:
    """Per-sample ``-log p_model`` (nats) and NFE from `log_likelihood`, `elbo` or `ddpm_bound`."""
    if estimator == "ode":
        result = log_likelihood(*args, **kwargs)
        return result.nll, result.nfe
    result = (elbo if estimator == "elbo" else ddpm_bound)(*args, **kwargs)
    return result.bound, result.nfe
