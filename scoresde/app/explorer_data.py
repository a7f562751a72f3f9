r"""What the interactive explorer shows, computed once from library functions: `ExplorerData` holds numbers only
(no model, no plotting), so that a page can be drawn from it, saved beside a run or shipped with the docs.

Everything is indexed by the explorer's slider times $t_0 < \dots < t_{F-1}$ (`explorer_times`): samples of the
forward marginal $p_t$ and its density, the learned score against the exact one, and the positions on the reverse
SDE's and the probability-flow ODE's paths from the same prior draws. Beside them: the samplers' samples with
their quality figures (`scoresde.evaluation.comparison.Comparison`) and the model's density on a grid against the
true one.

Symbols: ``F`` slider times, ``n`` forward samples, ``G`` density cells a side, ``A`` arrows a side, ``k``
trajectories, ``R`` sampler runs, ``m`` samples a run.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_positive_int
from .._io import json_safe, write_atomic
from ..likelihood.exponential_integrator import SolverError
from ..processes.base import SDE
from ..processes.score import ScoreFn
from .figures import DensityGrid, _as_image, _evaluate_score, _square_cells, model_density_grid, reverse_paths

__all__ = ["ExplorerData", "SamplerPanel", "explorer_times", "explorer_data", "sampler_panel", "kernel_bandwidth"]

FORMAT = "scoresde-explorer/1"
"""The format tag of a saved `ExplorerData` (``.npz``)."""


@dataclass
class SamplerPanel:
    """The samplers' panel: one row per run of a comparison, its samples ``x`` ``[R, m, 2]`` (NaN-padded where a
    run lost non-finite samples) beside the held-out data ``[m, 2]``.

    Attributes:
        labels, nfe, energy_distance: per run; ``floor`` the energy distance between two held-out sets.
        true_nll, true_nll_standard_error: the samples' mean true NLL (nats) where the data has a density, else
            None; ``entropy`` what a perfect sampler scores.
    """

    labels: list[str]
    nfe: list[int]
    energy_distance: list[float]
    floor: float
    x: np.ndarray
    held_out: np.ndarray
    true_nll: list[float] | None = None
    true_nll_standard_error: list[float] | None = None
    entropy: float | None = None


def sampler_panel(comparison, held_out: Tensor, m: int = 1000) -> SamplerPanel:
    """The explorer's samplers' panel from a `scoresde.evaluation.comparison.Comparison`: each run's first ``m``
    samples beside the first ``m`` held-out points, with its NFE, energy distance, noise floor and true NLL."""
    m = min(check_positive_int("m", m), len(held_out))
    x = np.full((len(comparison.runs), m, 2), np.nan, dtype=np.float32)
    for i, run in enumerate(comparison.runs):
        kept = run.x[:m].detach().cpu().float().numpy()
        x[i, : len(kept)] = kept
    density = comparison.entropy is not None and all(run.true_nll is not None for run in comparison.runs)
    return SamplerPanel(
        labels=[run.spec.label for run in comparison.runs],
        nfe=[int(run.nfe) for run in comparison.runs],
        energy_distance=[float(run.energy_distance) for run in comparison.runs],
        floor=float(comparison.floor.get("energy_distance", float("nan"))),
        x=x,
        held_out=held_out[:m].detach().cpu().float().numpy(),
        true_nll=[float(run.true_nll) for run in comparison.runs] if density else None,
        true_nll_standard_error=[float(run.true_nll_standard_error) for run in comparison.runs] if density else None,
        entropy=float(comparison.entropy) if density else None,
    )


@dataclass
class ExplorerData:
    r"""The numbers behind an explorer page (`explorer_data`); arrays are float32 numpy, indexed by slider time
    first.

    Attributes:
        title, sde, model: what the page is about (the SDE's ``repr``; the model in words).
        extent: half-width of the square of the score and likelihood panels (the data's).
        times: the slider times ``[F]`` (increasing, $t_{min}$ to $T$).
        alpha, sigma, log_snr: $\alpha(t)$, $\sigma(t)$ and $\log(\alpha^2/\sigma^2)$ at ``times``.
        curve_t, curve_alpha, curve_sigma, curve_log_snr: the same on a fine grid ``[200]``, for the schedule plot.
        half: ``[F]`` half-width of the plane that holds $p_t$ (forward samples, density, paths).
        samples: ``[F, n, 2]`` $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$, the same $x_0, \epsilon$ at every $t$.
        density: ``[F, G, G]`` $p_t$ on the cells of ``[-half, half]^2`` (image rows: $x_2$); ``density_kind`` says
            how: "closed form" (the data's oracle) or "kernel estimate" (the data perturbed: a Gaussian kernel of
            variance $\sigma^2 + \alpha^2 h^2$ on draws of the data, $h$ from `kernel_bandwidth`).
        arrows: ``[A*A, 2]`` where the score is drawn; ``learned``, ``exact``: ``[F, A*A, 2]`` $\sigma(t)\,s$ there
            (the noise prediction, $-\hat\epsilon$; ``exact`` None without an oracle, ``learned`` None when the page
            shows the exact score alone).
        error: ``[F, G_e, G_e]`` $\sigma(t)\,|s_\theta - \nabla\log p_t|$ on ``[-extent, extent]^2``, and
            ``error_rms`` ``[F]`` its root mean square under $p_t$ (over ``samples``); None without both scores.
        sde_paths, ode_paths: ``[F, k, 2]`` the positions at ``times`` of ``k`` prior draws on the reverse SDE's and
            the probability-flow ODE's paths (the same draws; ``path_nfe`` their NFE).
        samplers: the samplers' panel (None: not computed).
        likelihood: the model's log-density on a grid and the true one (None: not computed).
        notes: what the page leaves out and why (e.g. a likelihood that cannot be computed), one line each.
    """

    title: str
    sde: str
    model: str
    extent: float
    density_kind: str
    times: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    log_snr: np.ndarray
    curve_t: np.ndarray
    curve_alpha: np.ndarray
    curve_sigma: np.ndarray
    curve_log_snr: np.ndarray
    half: np.ndarray
    samples: np.ndarray
    density: np.ndarray
    arrows: np.ndarray
    learned: np.ndarray | None
    exact: np.ndarray | None
    error: np.ndarray | None
    error_rms: np.ndarray | None
    sde_paths: np.ndarray
    ode_paths: np.ndarray
    path_nfe: dict[str, int] = field(default_factory=dict)
    samplers: SamplerPanel | None = None
    likelihood: DensityGrid | None = None
    notes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ saving
    def save(self, path: str | Path) -> Path:
        """Write the data as one ``.npz`` (arrays as float16 to keep a shipped file small: 3 significant digits,
        finer than a screen pixel of any panel; no pickles), atomically."""
        arrays, meta = {}, {"format": FORMAT}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if f.name == "samplers":
                meta["samplers"] = {k: v for k, v in asdict(value).items() if k not in ("x", "held_out")}
                arrays["samplers.x"], arrays["samplers.held_out"] = value.x, value.held_out
            elif f.name == "likelihood":
                meta["likelihood"] = {"extent": value.extent, "nfe": value.nfe}
                arrays["likelihood.model"] = value.model_log_prob.numpy()
                if value.true_log_prob is not None:
                    arrays["likelihood.true"] = value.true_log_prob.numpy()
            elif isinstance(value, np.ndarray):
                arrays[f.name] = value
            else:
                meta[f.name] = value
        arrays = {k: np.asarray(v, dtype=np.float16) for k, v in arrays.items()}
        arrays["meta"] = np.frombuffer(json.dumps(json_safe(meta)).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        return write_atomic(path, buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> ExplorerData:
        """Read a file written by `save`; one-line ``ValueError`` when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                arrays = {k: archive[k] for k in archive.files}
            meta = json.loads(arrays.pop("meta").tobytes().decode())
        except (OSError, ValueError, KeyError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is not an explorer data file written by ExplorerData.save ({exc})") from None
        if meta.pop("format", None) != FORMAT:
            raise ValueError(f"{path} is not an explorer data file of format {FORMAT}")
        arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
        samplers = meta.pop("samplers", None)
        if samplers is not None:
            samplers = SamplerPanel(x=arrays.pop("samplers.x"), held_out=arrays.pop("samplers.held_out"), **samplers)
        likelihood = meta.pop("likelihood", None)
        if likelihood is not None:
            true = arrays.pop("likelihood.true", None)
            likelihood = DensityGrid(
                likelihood["extent"],
                torch.from_numpy(arrays.pop("likelihood.model")).double(),
                torch.from_numpy(true).double() if true is not None else None,
                likelihood["nfe"],
            )
        optional = {name: arrays.pop(name, None) for name in ("learned", "exact", "error", "error_rms")}
        return cls(**meta, **arrays, **optional, samplers=samplers, likelihood=likelihood)


def explorer_times(sde: SDE, frames: int = 41) -> Tensor:
    r"""The slider times ``[frames]`` from $t_{min}$ (``sde.sampling_t_min``) to $T$, uniform in $\sqrt t$:
    $t_j = t_{min} + (T - t_{min})\,(j / (F-1))^2$, so that the small times where the data's structure appears get
    as many positions as the long stretch of near-prior noise."""
    frames = check_positive_int("frames", frames)
    if frames < 2:
        raise ValueError(f"frames must be >= 2 (a slider needs two positions), got {frames}")
    u = torch.linspace(0.0, 1.0, frames, dtype=torch.float64)
    return sde.sampling_t_min + (sde.T - sde.sampling_t_min) * u**2


def _plane_half(extent: float, alpha: Tensor, sigma: Tensor) -> Tensor:
    r"""Half-width of a square that holds $p_t$: $\alpha(t)\,\text{extent} + 3\sigma(t)$ (the data's square,
    shrunk, plus three noise standard deviations)."""
    return alpha * extent + 3.0 * sigma


def kernel_bandwidth(points: Tensor, candidates: int = 16) -> float:
    r"""The bandwidth $h$ of a Gaussian kernel estimate of the density of ``points`` ``[N, 2]`` that maximises the
    leave-one-out likelihood $\sum_i \log \frac{1}{N-1}\sum_{j\ne i}\mathcal N(x_i; x_j, h^2 I)$ over ``candidates``
    values from 1/50 to 1 times the data's standard deviation (geometric). Scott's rule $N^{-1/6}\,\mathrm{std}$
    assumes one Gaussian and over-smooths a multimodal toy (measured on 8 Gaussians: total variation 0.43 from the
    closed form at $t_{min}$, against 0.11 with this choice; 0.18 and 0.17 on gmm and the checkerboard; under
    0.01 everywhere once $\sigma(t) > 0.9$)."""
    scale = float(points.std(dim=0).mean())
    d2 = torch.cdist(points, points) ** 2
    d2.fill_diagonal_(float("inf"))
    best, best_h = -math.inf, scale
    for h in (scale * torch.logspace(math.log10(0.02), 0.0, candidates, dtype=torch.float64)).tolist():
        loo = torch.logsumexp(-0.5 * d2 / h**2, dim=1) - math.log(len(points) - 1) - math.log(2 * math.pi * h**2)
        if float(loo.mean()) > best:
            best, best_h = float(loo.mean()), h
    return best_h


def _kernel_log_density(points: Tensor, cells: Tensor, alpha: float, sigma: float, h: float) -> Tensor:
    r"""$\log \frac1N\sum_i \mathcal N(x; \alpha x_i, (\sigma^2 + \alpha^2 h^2) I)$ at ``cells`` for data draws
    ``points`` ``[N, 2]``: the kernel estimate of $p_0$ (bandwidth $h$) carried through the perturbation kernel."""
    var = sigma**2 + (alpha * h) ** 2
    d2 = torch.cdist(cells, alpha * points) ** 2
    return torch.logsumexp(-0.5 * d2 / var, dim=1) - math.log(len(points)) - math.log(2 * math.pi * var)


def _at_times(result, times: Tensor) -> np.ndarray:
    """The states of a sampled trajectory at the slider ``times`` (each the recorded state nearest in time)."""
    recorded = result.times.double()
    index = (recorded[None, :] - times[:, None]).abs().argmin(dim=1)
    return result.trajectory[index].detach().cpu().float().numpy()


def _f32(x) -> np.ndarray | None:
    """A tensor (or a list of them, stacked) as a float32 array; None for None or an empty list."""
    if x is None or (isinstance(x, list) and not x):
        return None
    return (torch.stack(x) if isinstance(x, list) else x).detach().cpu().float().numpy()


def _marginal_densities(sde, oracle, kde_points, times, alpha, sigma, half, grid: int) -> Tensor:
    """The marginal densities $p_t$ at each time on a ``grid`` x ``grid`` square of half-width ``half[j]``: the
    oracle's closed form, or a kernel estimate from ``kde_points`` noised to t."""
    h = kernel_bandwidth(kde_points[:1000]) if kde_points is not None else 0.0
    density = torch.empty(len(times), grid, grid, dtype=torch.float64)
    for j, t in enumerate(times.tolist()):
        cells = _square_cells(float(half[j]), grid)
        if oracle is not None:
            logp = oracle.marginal_log_prob(sde, cells, t)
        else:
            logp = _kernel_log_density(kde_points, cells, float(alpha[j]), float(sigma[j]), h)
        density[j] = _as_image(logp.exp(), grid)
    return density


def _score_fields(sde, score_fn, oracle, times, sigma, where, samples, error_grid: int, extent: float) -> tuple:
    r"""At each time, $\sigma s$ of the model and of the oracle at the arrows ``where``, and where both exist the
    model's error $\sigma\|s_\theta - s\|$ on an ``error_grid`` square and its RMS on the forward ``samples``."""
    dense = _square_cells(extent, error_grid)
    learned, exact, error, error_rms = [], [], [], []
    for j, t in enumerate(times.tolist()):
        s = float(sigma[j])
        if score_fn is not None:
            learned.append(s * _evaluate_score(score_fn, where, t))
        if oracle is not None:
            exact.append(s * oracle.marginal_score(sde, where, t))
        if score_fn is not None and oracle is not None:
            gap = s * (_evaluate_score(score_fn, dense, t) - oracle.marginal_score(sde, dense, t))
            error.append(_as_image(gap.norm(dim=1), error_grid))
            on_pt = s * (_evaluate_score(score_fn, samples[j], t) - oracle.marginal_score(sde, samples[j], t))
            error_rms.append(on_pt.pow(2).sum(dim=1).mean().sqrt())
    return learned, exact, error, error_rms


def explorer_data(
    sde: SDE,
    score_fn: ScoreFn | None,
    data_sampler: Callable[[int, torch.Generator], Tensor],
    *,
    oracle: Any = None,
    extent: float = 4.5,
    title: str = "",
    model_name: str = "",
    frames: int = 41,
    n: int = 500,
    grid: int = 48,
    arrows: int = 15,
    error_grid: int = 40,
    paths: int = 24,
    path_steps: int = 400,
    comparison: Any = None,
    held_out: Tensor | None = None,
    likelihood: DensityGrid | None = None,
    likelihood_grid: int = 0,
    seed: int = 0,
) -> ExplorerData:
    r"""Compute what an explorer page shows for a 2D model ``score_fn`` (a network's score, or None to show the
    ``oracle``'s exact score alone) under ``sde``.

    Args:
        data_sampler: ``data_sampler(n, generator) -> [n, 2]`` draws of the data (a toy's ``sample``).
        oracle: the data's exact marginals under any SDE (``marginal_log_prob``, ``marginal_score``, ``score_fn``:
            `scoresde.GaussianMixture`, `scoresde.oracles.UniformBoxes`), or None: then $p_t$ is a kernel estimate
            and there is no exact score.
        extent: half-width of the data's square (score and likelihood panels).
        title: the page's title (default: the model and the SDE).
        model_name: the model in words.
        frames: slider positions.
        n: forward samples.
        grid: density cells a side.
        arrows: score arrows a side.
        error_grid: error cells a side.
        paths: prior draws followed.
        path_steps: the reverse SDE's steps (the ODE takes a quarter: the same NFE with RK4).
        comparison: a `scoresde.evaluation.comparison.Comparison`, for the samplers' panel (None: no panel).
        held_out: the comparison's held-out data.
        likelihood: a `scoresde.app.figures.DensityGrid` computed before (e.g. by the demo), or with
            ``likelihood_grid > 0`` computed here (one PF-ODE solve of ``likelihood_grid**2`` points; for the exact
            score alone, only where the data has mass); else none.
        seed: seeds the data draws, the forward noise and the paths.
    """
    if score_fn is None and oracle is None:
        raise ValueError("explorer_data needs a score_fn, an oracle or both")
    exact_fn = oracle.score_fn(sde) if oracle is not None else None
    model = score_fn if score_fn is not None else exact_fn
    generator = torch.Generator().manual_seed(seed)
    times = explorer_times(sde, frames)
    alpha, sigma, log_snr = sde.alpha(times), sde.sigma(times), sde.log_snr(times)
    curve_t = torch.linspace(sde.sampling_t_min, sde.T, 200, dtype=torch.float64)
    half = _plane_half(extent, alpha, sigma)

    x0 = data_sampler(n, generator).double()
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    samples = alpha[:, None, None] * x0 + sigma[:, None, None] * noise
    kde_points = data_sampler(2000, generator).double() if oracle is None else None
    density = _marginal_densities(sde, oracle, kde_points, times, alpha, sigma, half, grid)
    where = _square_cells(extent, arrows)
    learned, exact, error, error_rms = _score_fields(sde, score_fn, oracle, times, sigma, where, samples, error_grid,
                                                     extent)  # fmt: skip

    runs = reverse_paths(sde, model, paths, steps=path_steps, seed=seed)
    (sde_name, sde_run), (ode_name, ode_run) = runs.items()
    notes = []
    if likelihood is None and likelihood_grid > 0:
        true = (lambda x: oracle.marginal_log_prob(sde, x, 0.0)) if oracle is not None else None
        try:
            likelihood = model_density_grid(sde, model, extent=extent, grid=likelihood_grid, true_log_prob=true,
                                            support_only=score_fn is None)  # fmt: skip
        except SolverError as exc:  # e.g. the exact score of data with edges, outside its support as t -> 0
            notes.append(f"The likelihood panel is left out: {str(exc).split(';')[0]}.")
    panel = sampler_panel(comparison, held_out) if comparison is not None and held_out is not None else None

    f32 = _f32
    curves = {f"curve_{k}": f32(getattr(sde, k)(curve_t)) for k in ("alpha", "sigma", "log_snr")}
    return ExplorerData(
        title=title or f"{model_name or 'exact score'} under {sde!r}", sde=repr(sde),
        model=model_name or "the exact score (oracle)", extent=float(extent),
        density_kind="closed form" if oracle is not None else "kernel estimate",
        times=f32(times), alpha=f32(alpha), sigma=f32(sigma), log_snr=f32(log_snr), curve_t=f32(curve_t), **curves,
        half=f32(half), samples=f32(samples), density=f32(density), arrows=f32(where), learned=f32(learned),
        exact=f32(exact), error=f32(error), error_rms=f32(error_rms), sde_paths=_at_times(sde_run, times),
        ode_paths=_at_times(ode_run, times), path_nfe={sde_name: int(sde_run.nfe), ode_name: int(ode_run.nfe)},
        samplers=panel, likelihood=likelihood, notes=notes,
    )  # fmt: skip
