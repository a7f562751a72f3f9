r"""The likelihood of a cascade: an upper bound on bits/dim through its conditioning augmentation.

The cascade's generative model draws $x_{low} \sim p_{base}$, augments it, $\tilde x = x_{low} + s\epsilon$, and draws
$x \sim p_{SR}(x \mid \tilde x, s)$. Its density of $x$ integrates over $\tilde x$, whose law is the base model's
smoothed by $\mathcal N(0, s^2 I)$. Under a variance-preserving base SDE that smoothing is the base's own marginal at
the time $t_s$ with $\sigma/\alpha = s$: $\tilde p_s(\tilde x) = \alpha^d\,p_{t_s}(\alpha\tilde x)$, which the
probability-flow ODE evaluates from $t_s$. With the posterior guess $q(\tilde x \mid x) = \mathcal N(Ax, s^2 I)$
($A$ the block average to the low resolution),

$$-\log p(x) \le \mathbb E_q\big[\underbrace{-\log p_{SR}(x \mid \tilde x, s)}_{\text{super-resolution}}
\underbrace{-\ \log \tilde p_s(\tilde x)}_{\text{base}} + \underbrace{\log q(\tilde x \mid x)}_{\text{augmentation}}
\big],$$

the last term $-\tfrac d2\log(2\pi e s^2)$ in closed form. For exact stages the true posterior of $\tilde x$ given
$x$ is this very $q$, so the bound is **tight**: it meets $-\log p(x)$ (the Gaussian-cascade oracle checks it). It needs
$s > 0$. Images are dequantised as for pixel-space bits/dim (`scoresde.likelihood.bits_per_dim`) and the data
transform's log-determinant is added, so the figures stand side by side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.nn.functional import avg_pool2d

from .._checks import check_finite
from .._io import json_safe
from .._stats import mean_and_standard_error
from ..datasets.scalers import DataTransform
from ..processes.base import SDE
from ..processes.seam import spec_of
from .pf_ode import log_likelihood

__all__ = ["cascade_bits_per_dim", "CascadeBoundResult", "CASCADE_TERMS"]

CASCADE_TERMS = ("super_resolution", "base", "augmentation")
"""The bound's terms, in the order of the equation (module docstring)."""


@dataclass
class CascadeBoundResult:
    """Output of `cascade_bits_per_dim`: the bound and its terms in bits per dimension of the images.

    Attributes:
        bpd: the bound (with the transform's log-determinant for images: the field's convention), mean over the data.
        bpd_standard_error: its standard error over the data.
        terms: ``super_resolution``, ``base``, ``augmentation`` (bits/dim; with ``offset`` they add up to ``bpd``).
        offset: $-\\log_2((b - a)/K)$ for images (0 for continuous data).
        per_sample: each row's bound ``[B]``.
        nfe: score evaluations of both stages' probability-flow solves.
        level: the augmentation level $s$; ``base_time``: $t_s$.
        settings: every argument that moves the number.
    """

    bpd: float
    bpd_standard_error: float
    terms: dict
    offset: float
    per_sample: Tensor
    nfe: int
    level: float
    base_time: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        keys = ("bpd", "bpd_standard_error", "terms", "offset", "nfe", "level", "base_time", "settings")
        return json_safe({k: getattr(self, k) for k in keys})


def cascade_bits_per_dim(
    base_sde: SDE,
    base: Any,
    sde: SDE,
    super_resolution: Any,
    x: Tensor,
    level: float,
    low_size: int,
    transform: DataTransform | None = None,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    **likelihood_options: Any,
) -> CascadeBoundResult:
    r"""The cascade's bound on bits/dim of images ``x`` (module docstring), each term apart.

    Args:
        base_sde: the base stage's process (variance preserving: $\alpha^2 + \sigma^2 = 1$).
        base: the base stage's score model (``low_size`` images).
        sde: the super-resolution stage's process.
        super_resolution: a model declaring ``condition``.
        x: integer levels ``[B, C, H, W]`` with ``transform`` (dequantised uniformly, one draw), else continuous.
        level: the augmentation level $s > 0$ the bound integrates over.
        low_size: the base stage's image size (divides ``H``).
        transform: the images' `DataTransform`; None for continuous data.
        generator: the dequantisation's, the augmentation's and any Hutchinson probes' randomness.
        dtype: of the probability-flow solves.
        **likelihood_options: for `scoresde.likelihood.log_likelihood` (tolerances, ``divergence`` ...), both stages.
    """
    if not spec_of(super_resolution).condition:
        raise ValueError("the super-resolution stage must be a model conditioned on a low-resolution image")
    if not level > 0:
        raise ValueError(f"the cascade's bound integrates over the augmentation: level must be > 0, got {level!r}")
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[-1] % low_size:
        raise ValueError(f"x must be images [B, C, H, W] with {low_size} dividing H, got {getattr(x, 'shape', x)}")
    check_finite("x", x.to(torch.float64))
    t = torch.tensor([0.5 * base_sde.T], dtype=torch.float64)
    if abs(float(base_sde.alpha(t) ** 2 + base_sde.sigma(t) ** 2) - 1) > 1e-6:
        raise ValueError(
            f"the cascade's bound reads the augmentation off a variance-preserving base SDE, got {base_sde!r}"
        )
    if transform is not None:
        u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
        x_model = transform.to_model(x.to(torch.float64) + u)
    else:
        x_model = x.to(torch.float64)
    x_model = x_model.to(dtype)
    low = avg_pool2d(x_model, x.shape[-1] // low_size)
    noise = torch.randn(low.shape, generator=generator, dtype=low.dtype).to(low.device)
    augmented = low + level * noise
    t_s = base_sde.t_from_log_snr(torch.tensor(-2 * math.log(level), dtype=torch.float64))
    alpha = float(base_sde.alpha(t_s))
    base_result = log_likelihood(base_sde, base, alpha * augmented, t_min=float(t_s), generator=generator,
                                 **likelihood_options)  # fmt: skip
    d = low[0].numel()
    base_nll = base_result.nll.to(torch.float64) - d * math.log(alpha)
    bound_model = super_resolution.given(augmented, level)
    sr_result = log_likelihood(sde, bound_model, x_model, generator=generator, **likelihood_options)
    augmentation = torch.full_like(base_nll, -0.5 * d * math.log(2 * math.pi * math.e * level**2))
    dim = x[0].numel()
    to_bits = 1.0 / (dim * math.log(2))
    parts = {
        "super_resolution": sr_result.nll.to(torch.float64) * to_bits,
        "base": base_nll * to_bits,
        "augmentation": augmentation * to_bits,
    }
    offset = 0.0 if transform is None else -transform.log_det_per_dim() / math.log(2)
    per_sample = sum(parts.values()) + offset
    bpd, se = mean_and_standard_error(per_sample)
    settings = {"level": level, "low_size": low_size, "dequantization": None if transform is None else "uniform",
                **json_safe(likelihood_options)}  # fmt: skip
    return CascadeBoundResult(
        bpd=bpd,
        bpd_standard_error=se,
        terms={name: float(values.mean()) for name, values in parts.items()},
        offset=offset,
        per_sample=per_sample.cpu(),
        nfe=base_result.nfe + sr_result.nfe,
        level=float(level),
        base_time=float(t_s),
        settings=settings,
    )
