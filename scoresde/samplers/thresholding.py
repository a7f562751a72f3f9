r"""x0 clipping and dynamic thresholding (Saharia et al. 2022): a guard for data of known range, as a score wrapper.

Every sampler reaches the data through the denoised estimate $\hat x_0 = (x + \sigma^2 s)/\alpha$ (Tweedie). For data
known to lie in $[l, h]$ the wrapper replaces it by a value inside the range and returns the score that denoises to it,

$$\tilde s(x, t) = \frac{\alpha\,\mathrm{clip}(\hat x_0) - x}{\sigma^2},$$

so every sampler of the registry applies it unchanged. Static clipping clamps each coordinate to $[l, h]$; dynamic
thresholding maps $u = (\hat x_0 - c)/r$ (centre $c$, half-width $r$) to $\mathrm{clamp}(u, -q, q)/q$ with $q$ the
``percentile`` of $|u|$ over each sample's coordinates, at least 1, which keeps detail where static clipping
saturates. Off by default (toys have no range); ``sample(..., x0_range=(l, h))`` turns it on and records it in
``result.settings``. A consistency model's output is its $\hat x_0$ and is clipped directly; a learned variance and
classes are forwarded (`scoresde.processes.seam.ModelWrapper`).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from .._checks import expand_to
from ..processes.base import SDE
from ..processes.score import ScoreFn
from ..processes.seam import ModelSpec, ModelWrapper, spec_of, x0_from_score

__all__ = ["ThresholdedScore"]


class ThresholdedScore(ModelWrapper):
    """``score_fn(x, t)`` whose denoised estimate is clipped to ``[low, high]`` (``percentile``: dynamic thresholding).

    Args:
        sde: the forward process (its ``alpha`` and ``sigma``).
        score_fn: the model's score.
        low: the data's lower bound in the model's space (images: -1).
        high: the data's upper bound (images: 1).
        percentile: in (0, 100]: dynamic thresholding at that percentile of each sample's ``|x0|`` (Imagen: 99.5);
            None: static clipping.
    """

    def __init__(self, sde: SDE, score_fn: ScoreFn, low: float, high: float, percentile: float | None = None) -> None:
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise ValueError(f"x0_range must be two finite numbers low < high, got ({low}, {high})")
        if percentile is not None and not 0 < float(percentile) <= 100:
            raise ValueError(f"threshold_percentile must lie in (0, 100], got {percentile!r}")
        super().__init__(score_fn)
        self.sde = sde
        self.clips_output = spec_of(score_fn).output == "consistency"
        self.centre, self.radius = (low + high) / 2, (high - low) / 2
        self.percentile = None if percentile is None else float(percentile)

    def wrap_spec(self, spec: ModelSpec) -> ModelSpec:
        return replace(spec, scaled=False)  # it changes the score: no scaled score of its own

    @property
    def score_fn(self) -> ScoreFn:
        """The wrapped model."""
        return self.inner

    def clip(self, x0: Tensor) -> Tensor:
        """``x0`` clipped (or dynamically thresholded) into ``[low, high]``."""
        u = (x0 - self.centre) / self.radius
        if self.percentile is None:
            u = u.clamp(-1.0, 1.0)
        else:
            q = torch.quantile(u.abs().flatten(1), self.percentile / 100, dim=1).clamp(min=1.0)
            q = expand_to(q, u)
            u = torch.maximum(torch.minimum(u, q), -q) / q
        return self.centre + self.radius * u

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.clips_output:
            return self.clip(self.score_fn(x, t))
        x0 = self.clip(x0_from_score(self.sde, x, t, self.score_fn(x, t)))
        return (expand_to(self.sde.alpha(t), x) * x0 - x) / expand_to(self.sde.sigma(t), x) ** 2
