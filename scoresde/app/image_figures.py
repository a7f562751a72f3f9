"""Figures of images (matplotlib): sample mosaics, a cascade's stages side by side, an autoencoder's latent space and
reconstructions, inpainting. Every function returns a ``Figure``; callers save it."""

from __future__ import annotations

import math
from typing import Any

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .figures import scatter_panel, square_panel

__all__ = [
    "check_samples",
    "show_images",
    "mosaic",
    "autoencoder_figures",
    "plot_inpainting",
    "plot_latent_space",
    "plot_sample_grids",
    "plot_samples",
]


def mosaic(x: torch.Tensor, low: float, high: float, cols: int) -> torch.Tensor:
    """Images ``[N, C, H, W]`` tiled into one ``[rows*(H+1), cols*(W+1), C]`` picture in ``[0, 1]`` (1-pixel gaps)."""
    x = ((x.detach().cpu().float() - low) / (high - low)).clamp(0, 1)
    n, c, h, w = x.shape
    rows = math.ceil(n / cols)
    canvas = torch.full(
        (rows * (h + 1) - 1, cols * (w + 1) - 1, c), 0.0 if c == 1 else 1.0
    )  # blank gaps (grey: drawn inverted)
    for i, img in enumerate(x):
        r, q = divmod(i, cols)
        canvas[r * (h + 1) : r * (h + 1) + h, q * (w + 1) : q * (w + 1) + w] = img.permute(1, 2, 0)
    return canvas


def show_images(ax, x: torch.Tensor, low: float, high: float, cols: int, title: str) -> None:
    picture = mosaic(x, low, high, cols)
    picture = picture.numpy()
    if picture.shape[2] == 1:
        ax.imshow(1 - picture[:, :, 0], cmap="gray", vmin=0, vmax=1)  # ink dark on white, like the digits
    else:
        ax.imshow(picture)
    ax.axis("off")
    ax.set_title(title, fontsize=9)


def check_samples(x: torch.Tensor) -> None:
    if not (x.ndim == 2 and x.shape[1] == 2) and not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise ValueError(f"expected 2D points [N, 2] or images [N, 1|3, H, W], got shape {tuple(x.shape)}")


def plot_samples(
    x: torch.Tensor, title: str = "samples", levels: int | None = None, extent: float | None = None
) -> Figure:
    """Samples at a glance: a scatter plot for 2D data ``[N, 2]``, an image grid (up to 10 x 10) for images
    ``[N, C, H, W]`` (integer ``levels`` or values in ``[-1, 1]``)."""
    check_samples(x)
    if x.ndim == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        scatter_panel(ax, x, extent, title)
        fig.tight_layout()
        return fig
    n = min(len(x), 100)
    cols = min(n, 10)
    low, high = (0.0, float(levels - 1)) if levels is not None else (-1.0, 1.0)
    fig, ax = plt.subplots(figsize=(0.55 * cols + 0.6, 0.55 * math.ceil(n / cols) + 0.8))
    show_images(ax, x[:n], low, high, cols, title)
    fig.tight_layout()
    return fig


def plot_sample_grids(
    samples: dict[str, torch.Tensor],
    n: int = 40,
    cols: int = 10,
    low: float = -1.0,
    high: float = 1.0,
    panels_per_row: int = 3,
) -> Figure:
    """Image samples side by side, one panel per entry of ``samples`` (a label -> ``[N, C, H, W]`` in
    ``[low, high]``, the first ``n`` of each, ``cols`` images a row), ``panels_per_row`` panels a row: e.g. a teacher
    and its few-step students from the same prior draw."""
    for label, x in samples.items():
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"samples[{label!r}]: expected images [N, 1|3, H, W], got shape {tuple(x.shape)}")
    rows, wide = math.ceil(n / cols), min(len(samples), panels_per_row)
    tall = math.ceil(len(samples) / wide)
    fig, axes = plt.subplots(tall, wide, figsize=(0.5 * cols * wide + 0.4, (0.5 * rows + 0.7) * tall), squeeze=False)
    for ax in axes.flat[len(samples) :]:
        ax.axis("off")
    for ax, (label, x) in zip(axes.flat, samples.items()):
        show_images(ax, x[:n], low, high, cols, label)
    fig.tight_layout()
    return fig


def plot_latent_space(mean: torch.Tensor, labels: torch.Tensor | None, scaling_factor: float) -> Figure:
    r"""An autoencoder's latent space: the histogram of the scaled latents' values (posterior means ``[N, ...]``,
    already multiplied by the scaling factor $c$) and the means on their first two principal directions, coloured by
    ``labels``."""
    flat = mean.detach().double().flatten(1).cpu()
    _, _, directions = torch.pca_lowrank(flat, q=2)
    projection = (flat - flat.mean(0)) @ directions
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    axes[0].hist(flat.flatten().numpy(), bins=60, density=True)
    axes[0].set_title(f"scaled latents (c = {scaling_factor:.3f}): std {float(flat.std()):.2f}")
    colours = None if labels is None else labels.cpu().numpy()
    points = axes[1].scatter(*projection.T.numpy(), c=colours, cmap="tab10", s=8)
    axes[1].set_title("posterior means, first two principal directions")
    if labels is not None:
        fig.colorbar(points, ax=axes[1], label="class")
    fig.tight_layout()
    return fig


def autoencoder_figures(
    codec: Any, images: torch.Tensor, labels: torch.Tensor | None, transform: Any
) -> dict[str, Figure]:
    """The pictures of an autoencoder (a `scoresde.models.LatentCodec`) on integer ``images``: ``reconstructions``
    (the first 10 beside their reconstructions through the posterior mean) and ``latent_space``
    (`plot_latent_space`)."""
    x = transform.to_model(images.float() + 0.5)
    with torch.no_grad():
        mean, _ = codec.posterior(x)
        reconstruction = codec.decode(mean[:10]).clamp(transform.low, transform.high)
    shown = {"images": x[:10], "reconstructions": reconstruction}
    return {
        "reconstructions": plot_sample_grids(shown, n=10, cols=10, low=transform.low, high=transform.high),
        "latent_space": plot_latent_space(mean, labels, codec.scaling_factor),
    }


def plot_inpainting(
    original: torch.Tensor,
    known: torch.Tensor,
    completed: torch.Tensor,
    *,
    levels: int | None = None,
    extent: float | None = None,
    title: str = "inpainting",
    n: int = 10,
) -> Figure:
    """Inpainting at a glance. Images ``[N, C, H, W]``: rows of originals, the masked inputs (missing pixels
    grey) and the completions, ``n`` columns. 2D points: the originals and the completions, with each completed
    point joined to its original."""
    if original.shape != completed.shape:
        raise ValueError(
            f"original and completed must have one shape, got {tuple(original.shape)} and {tuple(completed.shape)}"
        )
    check_samples(original)
    known = known.expand(original.shape).bool()
    if original.ndim == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        for a, b in zip(original[:200], completed[:200]):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.7", lw=0.5)
        ax.scatter(original[:, 0], original[:, 1], s=4, color="0.3", label="original")
        ax.scatter(completed[:, 0], completed[:, 1], s=4, color="C1", label="completed")
        square_panel(ax, extent, title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return fig
    low, high = (0.0, float(levels - 1)) if levels is not None else (-1.0, 1.0)
    k = min(n, original.shape[0])
    masked = torch.where(known[:k], original[:k], torch.full_like(original[:k], (low + high) / 2))
    fig, axes = plt.subplots(3, 1, figsize=(0.6 * k + 0.8, 3 * 0.75 + 1.6))
    for ax, (row, images) in zip(
        axes, [("original", original[:k]), ("masked input", masked), ("completed", completed[:k])]
    ):
        show_images(ax, images, low, high, k, row)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
