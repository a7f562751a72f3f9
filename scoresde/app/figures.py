"""Teaching and report figures (matplotlib). Every function returns a ``Figure``; callers save it."""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# No backend is forced here: matplotlib picks Agg by itself where there is no display, and a notebook keeps its
# inline backend (forcing Agg on import hid every figure of the teaching notebooks).
import matplotlib.pyplot as plt
import torch
from matplotlib.animation import FuncAnimation
from matplotlib.figure import Figure

from ..datasets import toy_dataset, toy_datasets
from ..oracles.gaussian_mixture import GaussianMixture, grid_cells
from ..processes.base import SDE
from ..processes.score import ScoreFn

__all__ = [
    "plot_toy_datasets",
    "plot_forward_process",
    "plot_samples",
    "plot_sample_grids",
    "plot_latent_space",
    "autoencoder_figures",
    "plot_score_field",
    "plot_trajectories",
    "reverse_paths",
    "DensityGrid",
    "model_density_grid",
    "plot_model_density",
    "plot_quality_vs_nfe",
    "plot_comparison",
    "plot_training_curve",
    "plot_grid",
    "plot_solver",
    "animate_reverse_process",
    "plot_inpainting",
    "plot_accuracy_vs_guidance",
]


def plot_toy_datasets(names: Sequence[str] | None = None, n: int = 2000, seed: int = 0) -> Figure:
    """Scatter plots of ``n`` samples of each toy in ``names`` (default: all), one panel each."""
    names = list(names) if names is not None else toy_datasets()
    cols = min(len(names), 5)
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False)
    generator = torch.Generator().manual_seed(seed)
    for ax, name in zip(axes.flat, names):
        data = toy_dataset(name)
        title = name + (f"\nH = {data.entropy():.3f} nats" if data.has_density else "")
        _scatter(ax, data.sample(n, generator), data.extent, title)
    for ax in list(axes.flat)[len(names) :]:
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
    r"""Samples of $p_t$ (top) next to the closed-form density of the same marginal (bottom).

    Samples are drawn through the perturbation kernel $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$;
    densities come from `GaussianMixture.marginal`.  ``times`` are fractions of ``sde.T``.
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
        density = _as_image(mixture.marginal(sde, t).log_prob(_square_cells(half, grid)).exp(), grid)
        axes[1, j].imshow(density.numpy(), origin="lower", extent=(-half, half, -half, half), cmap="viridis")
        _square(axes[0, j], half, f"t = {t:.3g}  (samples)")
        _square(axes[1, j], half, "closed-form $p_t$")
    fig.suptitle(f"Forward process of {sde!r}")
    fig.tight_layout()
    return fig


def _scatter(ax, x: torch.Tensor, extent: float | None, title: str, color: str = "C0") -> None:
    """2D points on ``ax`` with labelled axes, an equal aspect and an optional square window."""
    x = x.detach().cpu().float()
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color=color, rasterized=True)
    _square(ax, extent, title)


def _mosaic(x: torch.Tensor, low: float, high: float, cols: int) -> torch.Tensor:
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


def _show_images(ax, x: torch.Tensor, low: float, high: float, cols: int, title: str) -> None:
    picture = _mosaic(x, low, high, cols)
    picture = picture.numpy()
    if picture.shape[2] == 1:
        ax.imshow(1 - picture[:, :, 0], cmap="gray", vmin=0, vmax=1)  # ink dark on white, like the digits
    else:
        ax.imshow(picture)
    ax.axis("off")
    ax.set_title(title, fontsize=9)


def _check_samples(x: torch.Tensor) -> None:
    if not (x.ndim == 2 and x.shape[1] == 2) and not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise ValueError(f"expected 2D points [N, 2] or images [N, 1|3, H, W], got shape {tuple(x.shape)}")


def plot_samples(
    x: torch.Tensor, title: str = "samples", levels: int | None = None, extent: float | None = None
) -> Figure:
    """Samples at a glance: a scatter plot for 2D data ``[N, 2]``, an image grid (up to 10 x 10) for images
    ``[N, C, H, W]`` (integer ``levels`` or values in ``[-1, 1]``)."""
    _check_samples(x)
    if x.ndim == 2:
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        _scatter(ax, x, extent, title)
        fig.tight_layout()
        return fig
    n = min(len(x), 100)
    cols = min(n, 10)
    low, high = (0.0, float(levels - 1)) if levels is not None else (-1.0, 1.0)
    fig, ax = plt.subplots(figsize=(0.55 * cols + 0.6, 0.55 * math.ceil(n / cols) + 0.8))
    _show_images(ax, x[:n], low, high, cols, title)
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
        _show_images(ax, x[:n], low, high, cols, label)
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


def _square_cells(half: float, points: int) -> torch.Tensor:
    """Midpoints ``[points^2, 2]`` (float64) of a ``points x points`` grid of cells on ``[-half, half]^2``."""
    return grid_cells([-half, -half], [half, half], points)[0]


def _as_image(values: torch.Tensor, points: int) -> torch.Tensor:
    """Values on `_square_cells` as an image ``[points, points]`` for ``imshow(origin="lower")`` (rows: $x_2$)."""
    return values.reshape(points, points).T


def _model_dtype(score_fn: ScoreFn) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of a module's parameters (float64 / cpu for plain functions such as the oracle)."""
    params = list(score_fn.parameters()) if isinstance(score_fn, torch.nn.Module) else []
    return (params[0].dtype, params[0].device) if params else (torch.float64, torch.device("cpu"))


def _evaluate_score(score_fn: ScoreFn, x: torch.Tensor, t: float) -> torch.Tensor:
    dtype, device = _model_dtype(score_fn)
    with torch.no_grad():
        out = score_fn(x.to(device=device, dtype=dtype), torch.full((len(x),), t, dtype=dtype, device=device))
    return out.detach().cpu().to(torch.float64)


def plot_score_field(
    sde: SDE,
    score_fn: ScoreFn,
    times: Sequence[float] = (0.02, 0.1, 0.3, 1.0),
    *,
    mixture: GaussianMixture | None = None,
    extent: float = 4.5,
    arrows: int = 21,
    grid: int = 150,
) -> Figure:
    r"""The score field $s_\theta(x, t) \approx \nabla_x \log p_t(x)$ as arrows at several times
    (fractions of ``sde.T``), drawn over the closed-form density $p_t$ when ``mixture`` (the data's
    Gaussian mixture) is given, with a second row of the exact score $\nabla_x \log p_t$ for comparison.

    Arrows show $\sigma(t)\,s(x, t)$ (= $-\hat\epsilon$), whose size does not blow up as
    $t \to 0$; learned and exact arrows at the same ``t`` share one scale.
    """
    rows = 2 if mixture is not None else 1
    fig, axes = plt.subplots(rows, len(times), figsize=(2.9 * len(times), 3.0 * rows), squeeze=False)
    cells, dense = _square_cells(extent, arrows), _square_cells(extent, grid)
    for j, frac in enumerate(times):
        t = frac * sde.T
        sigma = float(sde.sigma(torch.tensor([t], dtype=torch.float64)))
        fields = [("learned", _evaluate_score(score_fn, cells, t))]
        if mixture is not None:
            fields.append(("exact", mixture.marginal_score(sde, cells, t)))
        scale = max(float((sigma * f).norm(dim=1).max()) for _, f in fields) / (1.6 * extent / arrows) + 1e-12
        density = _as_image(mixture.marginal(sde, t).log_prob(dense).exp(), grid) if mixture is not None else None
        for i, (name, field) in enumerate(fields):
            ax = axes[i, j]
            if density is not None:
                ax.imshow(density.numpy(), origin="lower", extent=(-extent, extent, -extent, extent), cmap="Blues")
            v = (sigma * field).numpy()
            ax.quiver(
                cells[:, 0].numpy(),
                cells[:, 1].numpy(),
                v[:, 0],
                v[:, 1],
                angles="xy",
                scale_units="xy",
                scale=scale,
                color="C1" if name == "learned" else "C3",
                width=0.004,
            )
            _square(ax, extent, f"{name} score, t = {t:.3g}")
    note = " over the closed-form $p_t$" if mixture is not None else ""
    fig.suptitle(rf"Score field $\sigma(t)\,s(x, t)$ of {sde!r}{note}", fontsize=10)
    fig.tight_layout()
    return fig


def reverse_paths(sde: SDE, score_fn: ScoreFn, n: int, *, steps: int = 200, seed: int = 0) -> dict:
    r"""``n`` prior draws $x_T$ carried to the data twice, with their whole paths: by the reverse SDE
    $dx = [f - g^2 s_\theta]dt + g\,d\bar w$ (Euler–Maruyama, ``steps`` uniform steps) and by the probability-flow
    ODE $dx/dt = f - \tfrac12 g^2 s_\theta$ (RK4, ``steps // 4`` steps: the same NFE). Returns
    ``{name: SampleResult}`` with ``trajectory`` ``[K, n, ...]`` and ``times`` ``[K]`` (decreasing)."""
    from ..samplers.sampling import sample

    dtype, device = _model_dtype(score_fn)
    generator = torch.Generator(device=device).manual_seed(seed)
    x_T = sde.prior_sampling((n, 2), generator, device=device, dtype=dtype)
    return {
        "reverse SDE (Euler–Maruyama)": sample(
            sde,
            score_fn,
            (n, 2),
            "pc",
            steps=steps,
            predictor="euler_maruyama",
            corrector="none",
            x_T=x_T,
            generator=generator,
            return_trajectory=True,
        ),
        "probability-flow ODE (RK4)": sample(
            sde, score_fn, (n, 2), "ode", method="rk4", steps=max(steps // 4, 1), x_T=x_T, return_trajectory=True
        ),
    }


def plot_trajectories(
    sde: SDE,
    score_fn: ScoreFn,
    n: int = 12,
    *,
    steps: int = 200,
    seed: int = 0,
    extent: float = 4.5,
    data: torch.Tensor | None = None,
) -> Figure:
    r"""Reverse paths from the *same* prior draws $x_T$: the reverse SDE (Euler–Maruyama)
    $dx = [f - g^2 s_\theta]dt + g\,d\bar w$ and the probability-flow ODE
    $dx/dt = f - \tfrac12 g^2 s_\theta$ (RK4), both on ``steps`` uniform steps. Left and middle:
    the paths in the plane over ``data`` (optional, grey); right: the first coordinate against ``t``.
    The ODE's paths are smooth and deterministic; the SDE's jitter yet end on the same distribution."""
    runs = reverse_paths(sde, score_fn, n, steps=steps, seed=seed)
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.3))
    for ax, (name, result), color in zip(axes[:2], runs.items(), ("C0", "C1")):
        path = result.trajectory.cpu().double()
        if data is not None:
            ax.scatter(data[:, 0].cpu(), data[:, 1].cpu(), s=1, color="0.8", rasterized=True, label="data")
        for k in range(n):
            ax.plot(path[:, k, 0], path[:, k, 1], color=color, lw=0.7, alpha=0.8)
        ax.scatter(path[0, :, 0], path[0, :, 1], marker="o", s=14, color="k", label="start $x_T$", zorder=3)
        ax.scatter(path[-1, :, 0], path[-1, :, 1], marker="*", s=40, color="C3", label="end $x_0$", zorder=3)
        _square(ax, extent, f"{name}, NFE {result.nfe}")
        ax.legend(fontsize=7, loc="upper right")
    for (name, result), color in zip(runs.items(), ("C0", "C1")):
        path = result.trajectory.cpu().double()
        times = result.times.double()
        for k in range(min(n, 6)):
            axes[2].plot(times, path[:, k, 0], color=color, lw=0.8, label=name if k == 0 else None)
    axes[2].set_xlabel("t (the reverse process runs right to left)")
    axes[2].set_ylabel("$x_1(t)$")
    axes[2].invert_xaxis()
    axes[2].set_title("first coordinate against time (same $x_T$)", fontsize=9)
    axes[2].legend(fontsize=7)
    fig.suptitle(f"Reverse-time paths of {sde!r} from the same starting noise", fontsize=10)
    fig.tight_layout()
    return fig


def _square(ax, extent: float | None, title: str) -> None:
    """Labelled axes with an equal aspect over ``[-extent, extent]^2`` (``None``: matplotlib's own limits)."""
    if extent is not None:
        ax.set_xlim(-extent, extent)
        ax.set_ylim(-extent, extent)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$", fontsize=8)
    ax.set_ylabel("$x_2$", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=9)


@dataclass
class DensityGrid:
    r"""The model's log-density on the cells of a square (`model_density_grid`), beside the true one.

    Attributes:
        extent: half-width of the square; the cells are the ``grid x grid`` midpoints of ``[-extent, extent]^2``.
        model_log_prob: $\log p_\theta$ as an image ``[grid, grid]`` (rows: $x_2$, for ``origin="lower"``).
        true_log_prob: $\log p$ on the same cells, or None.
        nfe: the probability-flow ODE's function evaluations.
    """

    extent: float
    model_log_prob: torch.Tensor
    true_log_prob: torch.Tensor | None
    nfe: int

    @property
    def grid(self) -> int:
        return self.model_log_prob.shape[0]


SUPPORT_NATS = 25.0
"""Where `model_density_grid` counts the data as having mass: a log-density within this many nats of its peak."""


def model_density_grid(
    sde: SDE,
    score_fn: ScoreFn,
    *,
    extent: float = 4.5,
    grid: int = 64,
    true_log_prob: Callable[[torch.Tensor], torch.Tensor] | None = None,
    rtol: float = 1e-4,
    atol: float = 1e-4,
    progress: bool = False,
    support_only: bool = False,
) -> DensityGrid:
    r"""The model's density $\log p_\theta(x) = -\mathrm{NLL}(x)$ from the exact likelihood
    (`scoresde.log_likelihood`, probability-flow ODE, exact divergence) on a ``grid x grid`` grid of
    ``[-extent, extent]^2``, with ``true_log_prob`` on the same cells where given. Costs one ODE solve of
    ``grid**2`` points. ``support_only``: solve only where the data has mass, ``true_log_prob`` within
    `SUPPORT_NATS` of its peak (the model's value is NaN elsewhere): for the exact score of data with edges (the
    checkerboard), whose flow is singular outside the data as $t \to 0$."""
    from ..likelihood.pf_ode import log_likelihood

    cells = _square_cells(extent, grid)
    true = true_log_prob(cells) if true_log_prob is not None else None
    keep = torch.ones(len(cells), dtype=torch.bool)
    if support_only and true is not None:
        keep = true > true.max() - SUPPORT_NATS
    dtype, device = _model_dtype(score_fn)
    result = log_likelihood(
        sde, score_fn, cells[keep].to(device=device, dtype=dtype), rtol=rtol, atol=atol, progress=progress,
        batch_size=4096,
    )  # fmt: skip
    model = torch.full((len(cells),), float("nan"), dtype=torch.float64)
    model[keep] = -result.nll.detach().cpu().double()
    model_logp = _as_image(model, grid)
    true_logp = _as_image(true, grid) if true is not None else None
    return DensityGrid(extent, model_logp, true_logp, result.nfe)


def plot_model_density(
    sde: SDE, score_fn: ScoreFn, *, density: DensityGrid | None = None, **grid_options: Any
) -> Figure:
    r"""The model's density $p_\theta(x) = \exp(-\mathrm{NLL}(x))$ from the exact likelihood on a grid
    (`model_density_grid`, which takes ``grid_options``: ``extent``, ``grid``, ``true_log_prob``, ``rtol``, ``atol``,
    ``progress``), next to the true density and the pointwise log-ratio $\log p_\theta - \log p$ where
    ``true_log_prob`` is given. Costs one ODE solve of ``grid**2`` points, unless ``density`` (a `DensityGrid`
    computed before) is given, which is drawn instead."""
    if density is None:
        density = model_density_grid(sde, score_fn, **grid_options)
    extent, grid, model_logp, true_logp = density.extent, density.grid, density.model_log_prob, density.true_log_prob
    panels = [(f"model density (PF-ODE, {density.nfe} NFE)", model_logp.exp(), "viridis")]
    if true_logp is not None:
        vmax = float(true_logp.exp().max())
        panels.append(("true density", true_logp.exp(), "viridis"))
        ratio = (model_logp - true_logp).clamp(-3, 3)
        panels.append((r"$\log p_\theta - \log p$ (clipped to $\pm 3$)", ratio, "RdBu_r"))
    else:
        vmax = float(model_logp.exp().max())
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    for ax, (title, values, cmap) in zip(axes[0], panels):
        limits = {"vmin": -3, "vmax": 3} if cmap == "RdBu_r" else {"vmin": 0, "vmax": vmax}
        image = ax.imshow(
            values.numpy(), origin="lower", extent=(-extent, extent, -extent, extent), cmap=cmap, **limits
        )
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        _square(ax, extent, title)
    fig.suptitle(f"Density of the model against the truth ({grid}x{grid} grid)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_quality_vs_nfe(comparison, ax=None, metric: str = "energy_distance") -> Figure:
    """Quality against NFE for a `Comparison`: one line per sampler family
    (log-log), with the noise floor as a dashed line. ``metric``: ``energy_distance`` or ``sliced_wasserstein``."""
    if metric not in ("energy_distance", "sliced_wasserstein"):
        raise ValueError(f"metric must be energy_distance or sliced_wasserstein, got {metric!r}")
    fig = ax.figure if ax is not None else plt.figure(figsize=(6, 4.2))
    ax = ax if ax is not None else fig.add_subplot()
    families: dict[str, list] = {}
    for run in comparison.runs:
        families.setdefault(run.spec.family, []).append(run)
    for i, (family, runs) in enumerate(families.items()):
        runs = sorted(runs, key=lambda r: r.nfe)
        ax.plot(
            [r.nfe for r in runs],
            [getattr(r, metric) for r in runs],
            marker="o",
            ms=4,
            label=family,
            color=f"C{i % 10}",
        )
    if metric in comparison.floor:
        ax.axhline(comparison.floor[metric], color="k", ls="--", lw=1, label=f"noise floor (n = {comparison.n})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("NFE (score evaluations per sample)")
    ax.set_ylabel(metric.replace("_", " ") + " to held-out data")
    ax.set_title("Sample quality against NFE", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def plot_comparison(
    comparison, reference: torch.Tensor, *, extent: float | None = None, levels: tuple[float, float] = (-1.0, 1.0)
) -> Figure:
    """One figure for `compare_samplers`: held-out data and each sampler family's
    samples side by side (its largest NFE; scatter plots for 2D, image grids for images), and quality against NFE.
    ``levels``: the value range of images (model range by default)."""
    _check_samples(reference)
    best: dict[str, object] = {}
    for run in comparison.runs:
        if run.spec.family not in best or run.nfe > best[run.spec.family].nfe:
            best[run.spec.family] = run
    panels = [("held-out data", reference[: comparison.n])] + [
        (f"{textwrap.fill(run.spec.label, 34)}\nNFE {run.nfe}, ED {run.energy_distance:.1e}", run.x)
        for run in best.values()  # long family names wrap instead of running past the panel
    ]
    cols = min(len(panels), 4)
    rows = math.ceil(len(panels) / cols)
    fig = plt.figure(figsize=(3.1 * cols, 3.2 * rows + 4.2))
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[3.2] * rows + [4.2])
    for k, (title, x) in enumerate(panels):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        if x.ndim == 2:
            _scatter(ax, x, extent, title, color="0.3" if k == 0 else "C0")
        else:
            _show_images(ax, x[:36], levels[0], levels[1], 6, title)
    plot_quality_vs_nfe(comparison, ax=fig.add_subplot(grid[rows, :]))
    fig.suptitle(f"Samplers on one model ({comparison.n} samples each, same prior draw)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_grid(sde, grids: dict) -> Figure:
    r"""Time grids as their log-SNR $\lambda(t_i)$ against the step ``i`` (one line per named grid, e.g. a fixed
    schedule beside a fitted one): where each grid spends its steps."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for label, times in grids.items():
        lam = sde.log_snr(torch.as_tensor(times, dtype=torch.float64))
        ax.plot(range(len(lam)), lam.tolist(), "-o", label=f"{label} ({len(lam) - 1} steps)")
    ax.set(xlabel="step i", ylabel="log-SNR at t_i", title="time grids")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_solver(sde, solver) -> Figure:
    r"""A fitted solver (`scoresde.samplers.FittedSolver`): its times as the log-SNR $\lambda(t_i)$ against the step
    beside the start grid's, and its per-step corrections $c_{ij}$ (one bar group a step, one bar a past
    prediction $j$)."""
    from ..processes.grids import time_grid

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    start = solver.settings.get("start", "log_snr_warped")
    t_min = float(solver.times[-1])
    start = start if start in ("uniform", "log_snr", "log_snr_warped", "edm") else "log_snr_warped"
    for label, times in ((start, time_grid(sde, solver.steps, start, t_min)), ("fitted", solver.times)):
        lam = sde.log_snr(torch.as_tensor(times, dtype=torch.float64))
        left.plot(range(len(lam)), lam.tolist(), "-o", label=label)
    left.set(xlabel="step i", ylabel="log-SNR at t_i", title=f"times ({solver.steps} steps)")
    left.legend(fontsize=8)
    width = max((len(c) for c in solver.corrections), default=0)
    for j in range(width):
        values = [c[j] if j < len(c) else 0.0 for c in solver.corrections]
        right.bar([i + (j - (width - 1) / 2) * 0.25 for i in range(solver.steps)], values, width=0.25,
                  label=f"c_i{j + 1}: x0(i-{j + 1}) - x0(i)")  # fmt: skip
    right.axhline(0.0, color="k", lw=0.6)
    right.set(xlabel="step i", ylabel="correction", title=f"corrections to DPM-Solver++ {solver.order}M")
    right.legend(fontsize=7)
    fig.suptitle(f"fitted solver: objective {solver.start_error:.3g} -> {solver.error:.3g}", fontsize=9)
    fig.tight_layout()
    return fig


def plot_training_curve(history: str | Path | Sequence[dict]) -> Figure:
    """Loss (log scale) and learning rate against the step, from a run's ``metrics.csv`` or rows of
    ``{"step", "loss", "lr"}`` (e.g. `TrainResult.history`)."""
    if isinstance(history, (str, Path)):
        with open(history, newline="") as fh:
            history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    rows = [r for r in history if "step" in r and "loss" in r]
    if not rows:
        raise ValueError(
            "the training history holds no rows with step and loss; train for at least train.log_every steps"
        )
    fig, ax = plt.subplots(figsize=(6, 3.8))
    steps = [r["step"] for r in rows]
    loss = [r["loss"] for r in rows]
    ax.plot(steps, loss, color="C0", label="training loss (mean over the logging interval)")
    if all(v > 0 for v in loss):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if all("lr" in r for r in rows):
        twin = ax.twinx()
        twin.plot(steps, [r["lr"] for r in rows], color="C1", lw=1, ls="--", label="learning rate")
        twin.set_ylabel("learning rate")
        lines = ax.get_legend_handles_labels(), twin.get_legend_handles_labels()
        ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], fontsize=8)
    else:
        ax.legend(fontsize=8)
    ax.set_title("Training curve")
    fig.tight_layout()
    return fig


def animate_reverse_process(
    trajectory: torch.Tensor,
    times: torch.Tensor,
    *,
    extent: float = 4.5,
    frames: int = 40,
    title: str = "reverse process",
    interval: int = 100,
) -> FuncAnimation:
    """An animation of 2D samples along the reverse process (``trajectory [K, N, 2]`` at ``times [K]``, e.g.
    ``sample(..., return_trajectory=True)``), ``frames`` states evenly spaced; save it with
    ``anim.save("reverse.gif", writer="pillow")``. Its figure is ``anim._fig`` (labelled axes, time in the title)."""
    if trajectory.ndim != 3 or trajectory.shape[2] != 2 or times.shape[0] != trajectory.shape[0]:
        raise ValueError(
            f"trajectory must be [K, N, 2] with times [K], got {tuple(trajectory.shape)} and {tuple(times.shape)}"
        )
    path = trajectory.detach().cpu().float()
    picks = torch.linspace(0, len(path) - 1, min(frames, len(path))).round().long().tolist()
    fig, ax = plt.subplots(figsize=(4.5, 4.7))
    dots = ax.scatter(path[0, :, 0], path[0, :, 1], s=2, alpha=0.5)
    _square(ax, extent, title)

    def update(k: int):
        dots.set_offsets(path[picks[k]].numpy())
        ax.set_title(f"{title}: t = {float(times[picks[k]]):.3f}", fontsize=9)
        return (dots,)

    animation = FuncAnimation(fig, update, frames=len(picks), interval=interval, blit=False)
    animation.figure = fig  # a public handle: close it with plt.close(animation.figure) once saved
    return animation


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
    _check_samples(original)
    known = known.expand(original.shape).bool()
    if original.ndim == 2:
        fig, ax = plt.subplots(figsize=(5, 5))
        for a, b in zip(original[:200], completed[:200]):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="0.7", lw=0.5)
        ax.scatter(original[:, 0], original[:, 1], s=4, color="0.3", label="original")
        ax.scatter(completed[:, 0], completed[:, 1], s=4, color="C1", label="completed")
        _square(ax, extent, title)
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
        _show_images(ax, images, low, high, k, row)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_accuracy_vs_guidance(
    weights: Sequence[float],
    accuracy: Sequence[float],
    *,
    chance: float | None = None,
    title: str = "Classifier-free guidance",
) -> Figure:
    """Accuracy of a classifier on guided samples (the requested class recognised) against the guidance weight."""
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(list(weights), [100 * a for a in accuracy], marker="o")
    if chance is not None:
        ax.axhline(100 * chance, color="0.5", ls="--", lw=1, label="chance")
        ax.legend(fontsize=8)
    ax.set_xlabel("guidance weight w")
    ax.set_ylabel("requested class recognised (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    fig.tight_layout()
    return fig
