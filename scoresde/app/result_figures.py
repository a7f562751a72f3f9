"""Figures of results (matplotlib): quality against NFE, a comparison's samples, a fitted grid or solver, a training
curve, accuracy against the guidance weight. Every function returns a ``Figure``; callers save it."""

from __future__ import annotations

import csv
import math
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.figure import Figure

from .figures import scatter_panel
from .image_figures import check_samples, show_images

__all__ = [
    "plot_accuracy_vs_guidance",
    "plot_comparison",
    "plot_grid",
    "plot_quality_vs_nfe",
    "plot_solver",
    "plot_training_curve",
]


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
    check_samples(reference)
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
            scatter_panel(ax, x, extent, title, color="0.3" if k == 0 else "C0")
        else:
            show_images(ax, x[:36], levels[0], levels[1], 6, title)
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


EVAL_LABELS = {
    "eval_nll": "held-out NLL (nats)",
    "eval_nll_gap": "NLL gap to the true density (nats)",
    "eval_bpd": "held-out bits/dim",
    "eval_energy": "energy distance of samples",
    "eval_fd": "Fréchet distance of samples (shipped features)",
}
"""The evaluation figures drawn beside the loss (`scoresde.evaluation.during_training`), with their axis labels."""


def plot_training_curve(history: str | Path | Sequence[dict]) -> Figure:
    """Loss (log scale) and learning rate against the step, from a run's ``metrics.csv`` or rows of
    ``{"step", "loss", "lr"}`` (e.g. `TrainResult.history`); beside it, one panel per figure of evaluation while
    training that the rows hold (`EVAL_LABELS`: held-out likelihood, sample quality), its integration error as
    error bars where logged."""
    if isinstance(history, (str, Path)):
        with open(history, newline="") as fh:
            history = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
    rows = [r for r in history if "step" in r and "loss" in r]
    if not rows:
        raise ValueError(
            "the training history holds no rows with step and loss; train for at least train.log_every steps"
        )
    evals = [name for name in EVAL_LABELS if any(r.get(name) is not None for r in rows)]
    fig, axes = plt.subplots(1, 1 + len(evals), figsize=(6 + 4 * len(evals), 3.8), squeeze=False)
    ax = axes[0, 0]
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
    for panel, name in zip(axes[0, 1:], evals):
        points = [r for r in rows if r.get(name) is not None]
        error_name = "eval_nll_error" if name == "eval_nll_gap" else f"{name}_error"
        error = [r.get(error_name) or 0.0 for r in points]
        label = "EMA model" + (" (± integration error)" if any(error) else "")
        panel.errorbar([r["step"] for r in points], [r[name] for r in points], yerr=error, marker="o", ms=3,
                       color="C2", capsize=2, label=label)  # fmt: skip
        panel.set_xlabel("step")
        panel.set_ylabel(EVAL_LABELS[name])
        panel.set_title(EVAL_LABELS[name].split(" (")[0])
        panel.grid(True, alpha=0.3)
        panel.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ema_sweep(rows: Sequence[dict], tracked: Sequence[float]) -> Figure:
    """Quality against EMA length (`scoresde.evaluation.ema_sweep`): each measured figure (`EVAL_LABELS`) against
    sigma_rel, the tracked profiles marked."""
    names = [n for n in EVAL_LABELS if any(r.get(n) is not None for r in rows)]
    if not names:
        raise ValueError("the sweep's rows hold no figure to draw (eval_energy, eval_fd, eval_bpd, eval_nll)")
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        points = [r for r in rows if r.get(name) is not None]
        ax.plot([r["sigma_rel"] for r in points], [r[name] for r in points], "o-", color="C0", label="reconstructed")
        for k, s in enumerate(tracked):
            ax.axvline(s, color="C1", ls=":", lw=1, label="tracked profile" if k == 0 else None)
        ax.set_xlabel("EMA length sigma_rel (EDM2)")
        ax.set_ylabel(EVAL_LABELS[name])
        ax.set_title(f"{EVAL_LABELS[name].split(' (')[0]} against EMA length")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
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
