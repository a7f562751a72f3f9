"""Teaching and report figures (matplotlib). Every function returns a ``Figure``; callers save it."""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .analytic import GaussianMixture, grid_cells  # noqa: E402
from .datasets import toy_dataset, toy_datasets  # noqa: E402
from .sde import SDE  # noqa: E402

__all__ = ["plot_toy_datasets", "plot_forward_process", "plot_samples"]


def plot_toy_datasets(names: Sequence[str] | None = None, n: int = 2000, seed: int = 0) -> Figure:
    """Scatter plots of ``n`` samples of each toy in ``names`` (default: all), one panel each."""
    names = list(names) if names is not None else toy_datasets()
    cols = min(len(names), 5)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    generator = torch.Generator().manual_seed(seed)
    for ax, name in zip(axes.flat, names):
        data = toy_dataset(name)
        x = data.sample(n, generator).numpy()
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color="C0", rasterized=True)
        title = name + (f"\nH = {data.entropy():.3f} nats" if data.has_density else "")
        ax.set_title(title, fontsize=9)
        ax.set_xlim(-data.extent, data.extent)
        ax.set_ylim(-data.extent, data.extent)
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$", fontsize=8)
        ax.set_ylabel("$x_2$", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle(f"2D toy data sets ({n} samples each)")
    fig.tight_layout()
    return fig


def plot_forward_process(
    sde: SDE,
    mixture: GaussianMixture,
    times: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0),
    n: int = 2000,
    seed: int = 0,
    grid: int = 200,
) -> Figure:
    r"""Samples of :math:`p_t` (top) next to the closed-form density of the same marginal (bottom).

    Samples are drawn through the perturbation kernel :math:`x_t = \alpha(t) x_0 + \sigma(t)\epsilon`;
    densities come from :meth:`GaussianMixture.marginal`.  ``times`` are fractions of ``sde.T``.
    """
    if mixture.D != 2:
        raise ValueError(f"plot_forward_process draws 2D data, got a mixture of dimension {mixture.D}")
    generator = torch.Generator().manual_seed(seed)
    x0 = mixture.sample(n, generator, dtype=torch.float64)
    fig, axes = plt.subplots(2, len(times), figsize=(2.6 * len(times), 5.4), squeeze=False)
    for j, frac in enumerate(times):
        t = frac * sde.T
        mean, std = sde.marginal_prob(x0, torch.full((n,), t, dtype=torch.float64))
        xt = mean + std[:, None] * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
        half = float(3.5 * torch.sqrt(torch.diagonal(mixture.marginal(sde, t).covariance()).max()) + 1e-3)
        half = max(half, 1.2 * float(xt.abs().quantile(0.99)))
        axes[0, j].scatter(xt[:, 0], xt[:, 1], s=1.5, alpha=0.5, rasterized=True)
        cells, _ = grid_cells([-half, -half], [half, half], grid)
        density = mixture.marginal(sde, t).log_prob(cells).exp().reshape(grid, grid).T
        axes[1, j].imshow(density.numpy(), origin="lower", extent=(-half, half, -half, half), cmap="viridis")
        for row in (0, 1):
            ax = axes[row, j]
            ax.set_xlim(-half, half)
            ax.set_ylim(-half, half)
            ax.set_aspect("equal")
            ax.set_xlabel("$x_1$", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[0, j].set_title(f"t = {t:.3g}  (samples)", fontsize=9)
        axes[1, j].set_title("closed-form $p_t$", fontsize=9)
    axes[0, 0].set_ylabel("$x_2$")
    axes[1, 0].set_ylabel("$x_2$")
    fig.suptitle(f"Forward process of {sde!r}")
    fig.tight_layout()
    return fig


def plot_samples(x: torch.Tensor, title: str = "samples", levels: int | None = None, extent: float | None = None) -> Figure:
    """Samples at a glance: a scatter plot for 2D data ``[N, 2]``, an image grid (up to 10 x 10) for images
    ``[N, C, H, W]`` (integer ``levels`` or values in ``[-1, 1]``)."""
    x = x.detach().cpu().float()
    if x.ndim == 2 and x.shape[1] == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.5)
        if extent is not None:
            ax.set_xlim(-extent, extent)
            ax.set_ylim(-extent, extent)
        ax.set_aspect("equal")
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_title(title)
        fig.tight_layout()
        return fig
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"plot_samples draws 2D points [N, 2] or images [N, 1|3, H, W], got shape {tuple(x.shape)}")
    n = min(len(x), 100)
    cols = min(n, 10)
    rows = math.ceil(n / cols)
    low, high = (0.0, float(levels - 1)) if levels is not None else (-1.0, 1.0)
    fig, axes = plt.subplots(rows, cols, figsize=(0.7 * cols + 0.4, 0.7 * rows + 0.6), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, x[:n]):
        img = ((img - low) / (high - low)).clamp(0, 1)
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray_r", vmin=0, vmax=1)
        else:
            ax.imshow(img.permute(1, 2, 0))
    fig.suptitle(title)
    return fig
