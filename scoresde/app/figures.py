"""Teaching figures of the 2D toys (matplotlib): the data sets, the forward process, the score field, the
trajectories, the model's density, the reverse process animated. Every function returns a ``Figure``; callers save it.
Figures of images: `scoresde.app.image_figures`; of results: `scoresde.app.result_figures`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
    "scatter_panel",
    "square_panel",
    "plot_toy_datasets",
    "plot_forward_process",
    "plot_score_field",
    "plot_trajectories",
    "reverse_paths",
    "DensityGrid",
    "model_density_grid",
    "plot_model_density",
    "animate_reverse_process",
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
        scatter_panel(ax, data.sample(n, generator), data.extent, title)
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
        square_panel(axes[0, j], half, f"t = {t:.3g}  (samples)")
        square_panel(axes[1, j], half, "closed-form $p_t$")
    fig.suptitle(f"Forward process of {sde!r}")
    fig.tight_layout()
    return fig


def scatter_panel(ax, x: torch.Tensor, extent: float | None, title: str, color: str = "C0") -> None:
    """2D points on ``ax`` with labelled axes, an equal aspect and an optional square window."""
    x = x.detach().cpu().float()
    ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.5, color=color, rasterized=True)
    square_panel(ax, extent, title)


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
            square_panel(ax, extent, f"{name} score, t = {t:.3g}")
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
        square_panel(ax, extent, f"{name}, NFE {result.nfe}")
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


def square_panel(ax, extent: float | None, title: str) -> None:
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
        square_panel(ax, extent, title)
    fig.suptitle(f"Density of the model against the truth ({grid}x{grid} grid)", fontsize=10)
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
    square_panel(ax, extent, title)

    def update(k: int):
        dots.set_offsets(path[picks[k]].numpy())
        ax.set_title(f"{title}: t = {float(times[picks[k]]):.3f}", fontsize=9)
        return (dots,)

    animation = FuncAnimation(fig, update, frames=len(picks), interval=interval, blit=False)
    animation.figure = fig  # a public handle: close it with plt.close(animation.figure) once saved
    return animation
