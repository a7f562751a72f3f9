r"""The grid's coefficients that the exponential-integrator samplers share: $\alpha_i$, $\sigma_i$ and
$\lambda_i = \log(\alpha_i/\sigma_i)$ as Python floats from float64, the multistep orders' warm-up, and
$e^h - 1$ for floats and tensors."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Sampling

__all__ = ["grid_coefficients", "multistep_coefficients", "multistep_order", "expm1"]


def grid_coefficients(run: Sampling, grid: Tensor) -> tuple[list[float], list[float]]:
    r"""$\alpha(t_i)$ and $\sigma(t_i)$ on the grid, as Python floats computed in float64."""
    return run.sde.alpha(grid).tolist(), run.sde.sigma(grid).tolist()


def multistep_coefficients(run: Sampling, grid: Tensor) -> tuple[list[float], list[float], list[float]]:
    r"""On the grid of a multistep solver: $\alpha_i$, $\sigma_i$ and $\lambda_i = \log(\alpha_i/\sigma_i)$
    (half the log-SNR), as Python floats from float64."""
    alphas, sigmas = grid_coefficients(run, grid)
    return alphas, sigmas, (0.5 * run.sde.log_snr(grid)).tolist()


def multistep_order(order: int, i: int, steps: int, lower_order_final: bool) -> int:
    """Order of step ``i``: warm-up (no more than the ``i + 1`` predictions so far) and, with
    ``lower_order_final``, no more than the steps left."""
    return min(order, i + 1, steps - i if lower_order_final else order)


def expm1(h: float | Tensor) -> float | Tensor:
    """$e^h - 1$ of a float (``math``) or of a tensor (``torch``: differentiable)."""
    return torch.expm1(h) if isinstance(h, Tensor) else math.expm1(h)
