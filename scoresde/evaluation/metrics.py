r"""Distances between two sample sets, for judging samplers against true samples.

On raw samples (toys): energy distance, MMD and sliced Wasserstein. On features of images (from a feature network,
`scoresde.evaluation.features`): the Fréchet distance between feature Gaussians (FID when the features are
Inception-v3's), the
kernel distance (KID) with its standard error, and k-NN precision and recall.

The raw-sample distances are computed in float64 on the device of ``x`` and batched over blocks of rows, so that
10,000 x 10,000 pairs never materialise a full distance matrix (peak memory ~ ``block * m`` floats).

Each is a *V-statistic* by default (all pairs, diagonals included): non-negative, and for two independent
samples of the same law its expected value is a positive "noise floor" of order ``1/n`` — the yardstick
the tests and benchmarks compare samplers against.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_positive_int
from .._stats import _as_samples, _pair, mean_and_standard_error, sliced_energy_distance

__all__ = [
    "energy_distance",
    "energy_distance_floor",
    "sliced_energy_distance",
    "mmd",
    "sliced_wasserstein",
    "mean_and_standard_error",
    "GaussianStatistics",
    "frechet_distance",
    "kernel_distance",
    "precision_recall",
]

_BLOCK = 2048
"""Rows per block of a pairwise reduction: 2048 x 10,000 float64 = 160 MB at most."""


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


def energy_distance_floor(
    sample: Callable[[int, torch.Generator], Tensor],
    n: int,
    m: int | None = None,
    *,
    pairs: int = 1_000_000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    r"""The expected `energy_distance` between two independent sets of ``n`` and ``m`` (default ``n``) draws of the
    same law, and its standard error: the V-statistic's diagonal terms are zero, so
    $\mathbb E\,\mathcal E = (1/n + 1/m)\,\mathbb E\|X - X'\|$, with $\mathbb E\|X - X'\|$ estimated from
    ``pairs`` independent pairs of ``sample(k, generator)``. The noise floor of a sample-quality figure, to any
    precision, with none of the heavy tail of a floor measured from a few true-vs-true pairs."""
    m = n if m is None else m
    a, b = sample(pairs, generator), sample(pairs, generator)
    distance = (a - b).reshape(pairs, -1).double().norm(dim=1)
    factor = 1.0 / n + 1.0 / m
    return factor * float(distance.mean()), factor * float(distance.std()) / math.sqrt(pairs)


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


# ---------------------------------------------------------------------- features of images
@dataclass(frozen=True)
class GaussianStatistics:
    r"""Mean ``[F]`` and covariance ``[F, F]`` (float64, unbiased, $\frac1{n-1}\sum (f - \bar f)(f - \bar f)^\top$) of
    ``n`` feature vectors: what the Fréchet distance compares, and what a reference set caches."""

    mean: Tensor
    cov: Tensor
    n: int

    @classmethod
    def from_features(cls, features: Tensor) -> GaussianStatistics:
        """The statistics of features ``[n, F]`` (n >= 2)."""
        f = _as_samples("features", features)
        if f.shape[0] < 2:
            raise ValueError(f"features needs at least 2 rows for a covariance, got {f.shape[0]}")
        return cls(f.mean(dim=0), torch.cov(f.T).reshape(f.shape[1], f.shape[1]), f.shape[0])


def _statistics(value: GaussianStatistics | Tensor) -> GaussianStatistics:
    return value if isinstance(value, GaussianStatistics) else GaussianStatistics.from_features(value)


def _psd_sqrt(cov: Tensor) -> Tensor:
    """Symmetric square root of a covariance, negative round-off eigenvalues clamped to 0."""
    eigenvalues, vectors = torch.linalg.eigh(0.5 * (cov + cov.T))
    return (vectors * eigenvalues.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(x: GaussianStatistics | Tensor, y: GaussianStatistics | Tensor) -> float:
    r"""Fréchet (2-Wasserstein) distance between the Gaussians fitted to two feature sets (Heusel et al. 2017):

    $$d^2 = \|\mu_x - \mu_y\|^2 + \operatorname{tr}\big(C_x + C_y - 2\,(C_x^{1/2} C_y C_x^{1/2})^{1/2}\big).$$

    ``x``, ``y``: features ``[n, F]`` or their `GaussianStatistics`. The trace of the matrix square root is the sum of
    the square roots of the eigenvalues of the symmetric $C_x^{1/2} C_y C_x^{1/2}$ (float64): no inverse, so singular
    covariances (fewer samples than features, collapsed features) stay exact, with no ``eps`` added to the diagonal.
    On Inception-v3 pool features this is the FID; on another network's features, name the figure after it.
    """
    a, b = _statistics(x), _statistics(y)
    if a.mean.shape != b.mean.shape:
        raise ValueError(f"x and y must have the same number of features, got {a.mean.numel()} and {b.mean.numel()}")
    mean_a, mean_b = a.mean.to(torch.float64), b.mean.to(device=a.mean.device, dtype=torch.float64)
    cov_a, cov_b = a.cov.to(torch.float64), b.cov.to(device=a.cov.device, dtype=torch.float64)
    root_a = _psd_sqrt(cov_a)
    cross = torch.linalg.eigvalsh(root_a @ cov_b @ root_a).clamp(min=0).sqrt().sum()
    value = (mean_a - mean_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross
    return max(float(value), 0.0)


def _block_kernel_sums(u: list[Tensor], v: list[Tensor], dim: int, same: bool) -> Tensor:
    r"""``S[i, j]`` = sum of $k(a, b) = (a^\top b / F + 1)^3$ over rows a of block ``u[i]`` and b of ``v[j]``, without
    the pairs of a row with itself when ``same``."""
    sums = torch.zeros(len(u), len(v), dtype=torch.float64, device=u[0].device)
    for i, a in enumerate(u):
        for j, b in enumerate(v):
            k = (a @ b.T / dim + 1) ** 3
            sums[i, j] = k.sum() - (k.diagonal().sum() if same and i == j else 0.0)
    return sums


def kernel_distance(
    x: Tensor, y: Tensor, blocks: int = 10, *, generator: torch.Generator | None = None
) -> tuple[float, float]:
    r"""Kernel distance between two feature sets (KID, Bińkowski et al. 2018) and its standard error.

    The unbiased $\mathrm{MMD}^2$ with the cubic polynomial kernel $k(a, b) = (a^\top b / F + 1)^3$ on all pairs
    (a U-statistic: $i \ne i'$ within a set), so its mean is 0 when the laws agree (it may come out negative):

    $$\widehat{\mathrm{KID}} = \frac{\sum_{i \ne i'} k(x_i, x_{i'})}{m(m-1)}
    + \frac{\sum_{j \ne j'} k(y_j, y_{j'})}{n(n-1)} - \frac{2\sum_{i,j} k(x_i, y_j)}{mn}.$$

    Its standard error is the delete-a-subset jackknife over ``blocks`` disjoint subsets of each set (shuffled by
    ``generator``, default seed 0): $\mathrm{SE}^2 = \frac{b-1}{b}\sum_j (\hat\theta_{(-j)} - \bar\theta)^2$,
    every leave-one-out estimate read off one table of block kernel sums (one pass over all pairs). Unlike the std
    over overlapping random subsets that some tools report, it estimates the spread of the full-sample figure:
    accurately when the laws differ, conservatively (about 1.4x) when they agree and the statistic is degenerate.
    Returns ``(kid, standard_error)``.
    """
    x, y = _pair(x, y)
    blocks = check_positive_int("blocks", blocks)
    if blocks < 2 or min(x.shape[0], y.shape[0]) < 2 * blocks:
        raise ValueError(
            f"kernel_distance needs blocks >= 2 and at least 2 samples per block and set, got blocks={blocks} with "
            f"{x.shape[0]} and {y.shape[0]} samples; pass fewer blocks"
        )
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    xs = list(x[torch.randperm(x.shape[0], generator=generator).to(x.device)].tensor_split(blocks))
    ys = list(y[torch.randperm(y.shape[0], generator=generator).to(x.device)].tensor_split(blocks))
    dim = x.shape[1]
    s_xx, s_yy = _block_kernel_sums(xs, xs, dim, True), _block_kernel_sums(ys, ys, dim, True)
    s_xy = _block_kernel_sums(xs, ys, dim, False)
    m_b = torch.tensor([len(b) for b in xs], dtype=torch.float64, device=x.device)
    n_b = torch.tensor([len(b) for b in ys], dtype=torch.float64, device=x.device)

    def estimate(keep: Tensor) -> Tensor:
        m, n = m_b[keep].sum(), n_b[keep].sum()
        xx = s_xx[keep][:, keep].sum() / (m * (m - 1))
        yy = s_yy[keep][:, keep].sum() / (n * (n - 1))
        return xx + yy - 2 * s_xy[keep][:, keep].sum() / (m * n)

    everything = torch.ones(blocks, dtype=torch.bool, device=x.device)
    full = estimate(everything)
    left_out = torch.stack(
        [estimate(everything.clone().index_fill_(0, torch.tensor([j]), False)) for j in range(blocks)]
    )
    se = torch.sqrt((blocks - 1) / blocks * (left_out - left_out.mean()).pow(2).sum())
    return float(full), float(se)


def _kth_neighbour_radii(x: Tensor, k: int) -> Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    radii = []
    for start in range(0, x.shape[0], _BLOCK):
        d = torch.cdist(x[start : start + _BLOCK], x)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the 1st is the point itself (distance 0)
    return torch.cat(radii)


def _share_inside(points: Tensor, centres: Tensor, radii: Tensor) -> float:
    """Share of ``points`` inside at least one ball (``centres``, ``radii``)."""
    inside = []
    for start in range(0, points.shape[0], _BLOCK):
        d = torch.cdist(points[start : start + _BLOCK], centres)
        inside.append((d <= radii[None]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(real: Tensor, fake: Tensor, k: int = 3) -> tuple[float, float]:
    r"""Improved precision and recall (Kynkäänniemi et al. 2019) of features ``fake`` against ``real``.

    Each set's manifold is the union of balls around its points with radius the distance to the k-th nearest
    neighbour in the same set; precision is the share of ``fake`` inside the real manifold (quality), recall the share
    of ``real`` inside the fake manifold (coverage). Both in [0, 1]; ``k = 3`` as in the paper.
    """
    real, fake = _pair(real, fake)
    k = check_positive_int("k", k)
    if min(real.shape[0], fake.shape[0]) <= k:
        raise ValueError(
            f"precision_recall needs more than k = {k} samples per set, got {real.shape[0]}, {fake.shape[0]}"
        )
    precision = _share_inside(fake, real, _kth_neighbour_radii(real, k))
    recall = _share_inside(real, fake, _kth_neighbour_radii(fake, k))
    return precision, recall
