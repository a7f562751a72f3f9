r"""Distances between two sample sets, for judging samplers against true samples.

All three are computed in float64 on the device of ``x`` and batched over blocks of rows, so that
10,000 x 10,000 pairs never materialise a full distance matrix (peak memory ~ ``block * m`` floats).

Each is a *V-statistic* by default (all pairs, diagonals included): non-negative, and for two independent
samples of the same law its expected value is a positive "noise floor" of order ``1/n`` — the yardstick
the tests and benchmarks compare samplers against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._checks import check_positive_int

__all__ = ["energy_distance", "mmd", "sliced_wasserstein", "mean_and_standard_error"]

_BLOCK = 2048
"""Rows per block of a pairwise reduction: 2048 x 10,000 float64 = 160 MB at most."""


def _as_samples(name: str, x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of samples [n, ...], got {type(x).__name__}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"{name} must have shape [n, ...] with n >= 1, got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf); a sampler diverged or the data is corrupt")
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _pair(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    x, y = _as_samples("x", x), _as_samples("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of values per sample, got {x.shape[1]} and {y.shape[1]}")
    return x, y.to(x.device)


def _pairwise_mean(x: Tensor, y: Tensor, kernel: Callable[[Tensor], Tensor], exclude_diagonal: bool = False) -> Tensor:
    """Mean of ``kernel(squared distance)`` over all pairs of rows of ``x`` and ``y`` (optionally i != j)."""
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], _BLOCK):
        block = x[start : start + _BLOCK]
        d2 = torch.cdist(block, y).pow(2)
        k = kernel(d2)
        if exclude_diagonal:
            idx = torch.arange(block.shape[0], device=x.device)
            k[idx, idx + start] = 0.0
        total = total + k.sum()
    pairs = x.shape[0] * y.shape[0] - (x.shape[0] if exclude_diagonal else 0)
    return total / pairs


def energy_distance(x: Tensor, y: Tensor) -> float:
    r"""Energy distance (Székely & Rizzo) between samples ``x [n, ...]`` and ``y [m, ...]``:

    $$\mathcal E(x, y) = 2\,\overline{\|x_i - y_j\|} - \overline{\|x_i - x_{i'}\|} - \overline{\|y_j - y_{j'}\|},$$

    averages over all pairs (V-statistic, always >= 0, zero iff the empirical laws coincide).
    Flattens trailing dimensions.
    """
    x, y = _pair(x, y)
    dist = torch.sqrt
    return float(2 * _pairwise_mean(x, y, dist) - _pairwise_mean(x, x, dist) - _pairwise_mean(y, y, dist))


def mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] | None = None, *, unbiased: bool = False) -> float:
    r"""Squared maximum mean discrepancy with a sum of RBF kernels
    $k(a, b) = \sum_\ell \exp(-\|a - b\|^2 / (2 h_\ell^2))$:

    $$\mathrm{MMD}^2 = \overline{k(x_i, x_{i'})} + \overline{k(y_j, y_{j'})} - 2\,\overline{k(x_i, y_j)}.$$

    ``bandwidths`` default to the median pairwise distance of the pooled sample times
    (1/4, 1/2, 1, 2, 4), a standard multi-scale choice. ``unbiased=True`` drops the i = i' terms
    (U-statistic, mean 0 under the null, may be negative).
    """
    x, y = _pair(x, y)
    if bandwidths is None:
        pooled = torch.cat([x[:1000], y[:1000]])
        median = float(torch.cdist(pooled, pooled).median())
        bandwidths = [median * f for f in (0.25, 0.5, 1.0, 2.0, 4.0)]
    h = [float(v) for v in bandwidths]
    if not h or any(not math.isfinite(v) or v <= 0 for v in h):
        raise ValueError(f"bandwidths must be positive finite numbers, got {list(bandwidths)}")
    h2 = [2.0 * v**2 for v in h]

    def kernel(d2: Tensor) -> Tensor:
        return sum(torch.exp(-d2 / v) for v in h2)

    return float(
        _pairwise_mean(x, x, kernel, unbiased)
        + _pairwise_mean(y, y, kernel, unbiased)
        - 2 * _pairwise_mean(x, y, kernel)
    )


def _quantiles(projected: Tensor, levels: Tensor) -> Tensor:
    """Empirical quantiles ``[L, P]`` of each column of ``projected [n, P]`` at ``levels [L]``."""
    if projected.shape[0] == levels.numel():
        return projected.sort(dim=0).values
    return torch.quantile(projected, levels, dim=0, interpolation="linear")


def sliced_wasserstein(
    x: Tensor, y: Tensor, n_projections: int = 256, *, p: int = 2, generator: torch.Generator | None = None
) -> float:
    r"""Sliced Wasserstein distance $\big(\mathbb E_\theta\, W_p^p(\theta^\top x, \theta^\top y)\big)^{1/p}$
    over ``n_projections`` random directions $\theta$ on the unit sphere.

    Each 1D $W_p$ compares quantile functions on a common grid of ``max(n, m)`` levels, so ``x``
    and ``y`` may have different sizes. ``generator`` fixes the directions (default: seed 0, so that
    repeated calls on the same samples agree).
    """
    x, y = _pair(x, y)
    n_projections = check_positive_int("n_projections", n_projections)
    p = check_positive_int("p", p)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = torch.randn(x.shape[1], n_projections, generator=generator, dtype=torch.float64).to(x.device)
    theta = theta / theta.norm(dim=0, keepdim=True)
    levels = torch.arange(max(x.shape[0], y.shape[0]), dtype=torch.float64, device=x.device) + 0.5
    levels = levels / levels.numel()
    qx, qy = _quantiles(x @ theta, levels), _quantiles(y @ theta, levels)
    return float((qx - qy).abs().pow(p).mean() ** (1.0 / p))


def mean_and_standard_error(values: Tensor) -> tuple[float, float]:
    r"""$\bar v$ and its standard error $s / \sqrt n$ (sample standard deviation $s$) of per-sample values ``[n]``;
    the error is NaN for a single value."""
    n = values.numel()
    if n == 0:
        raise ValueError("values is empty: a mean and its standard error need at least one value")
    return float(values.mean()), (float(values.std()) / math.sqrt(n) if n > 1 else float("nan"))
