r"""Scalers between discrete data (``levels`` values per dimension) and a score model's continuous range.

One `DataTransform` is used identically by training (dequantise, scale), sampling (scale back,
quantise) and bits/dim (the scaling's log-determinant), so the three agree on what a pixel means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_positive_int

__all__ = ["DataTransform"]


@dataclass(frozen=True)
class DataTransform:
    r"""How discrete data with ``levels`` values per dimension (``0 .. levels-1``) maps to the model's range.

    Dequantised data $y = x + u \in [0, K)^D$, $u \sim U[0,1)^D$, is scaled affinely to
    $x_{model} = a + (b - a)\,y / K \in [a, b)^D$; the map adds the log-determinant
    $D\log((b - a)/K)$ to every log-density. Images: ``levels = 256``, range ``[-1, 1]``;
    scikit-learn digits: ``levels = 17``.
    """

    levels: int = 256
    low: float = -1.0
    high: float = 1.0

    def __post_init__(self) -> None:
        check_positive_int("levels", self.levels)
        if not self.high > self.low:
            raise ValueError(f"the model range must have high > low, got [{self.low}, {self.high}]")

    def to_model(self, y: Tensor) -> Tensor:
        """Dequantised data in ``[0, levels)`` -> model range ``[low, high)``."""
        return self.low + (self.high - self.low) * y / self.levels

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""Integer levels -> model range with uniform dequantisation: $a + (b - a)(x + u)/K$, $u \sim U[0, 1)$."""
        u = torch.rand(
            x.shape,
            generator=generator,
            dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
            device=x.device,
        )
        return self.to_model(x.to(u.dtype) + u)

    def from_model(self, x: Tensor) -> Tensor:
        """Model range -> integer levels ``0 .. levels-1`` (the inverse of `to_model`, floored and clipped)."""
        return torch.floor((x - self.low) / (self.high - self.low) * self.levels).clamp(0, self.levels - 1)

    def log_det_per_dim(self) -> float:
        r"""$\log((b - a)/K)$: the log-Jacobian of `to_model` per dimension (nats)."""
        return math.log((self.high - self.low) / self.levels)
