r"""Time grids fitted to a score: a few-step solve made to match a tight probability-flow solve.

For a solver ``S`` with ``K`` steps on a grid $T = t_0 > \dots > t_K = t_{min}$ and ``n`` calibration draws
$x_T^{(j)}$ of the prior, the grid minimises

$$J(t_1, \dots, t_{K-1}) = \frac1n\sum_j \big\|S(x_T^{(j)}; t_{0:K}) - \Phi(x_T^{(j)})\big\|^2,$$

with $\Phi$ a tight solve of the same probability-flow ODE (DPM-Solver++ 3M, 256 steps on the log-SNR grid) to the
same ``t_min`` (as in the grid search of DEIS / "Align Your Steps" (Sabour et al. 2024), which fit the grid to the
score; here by matching trajectories). The interior times are parameterised by the shares of the log-SNR interval
$[\lambda_T, \lambda_{t_{min}}]$ each step covers (a softmax, so any parameters give a valid grid) and optimised by
Nelder-Mead from a named grid (``start``, default ``log_snr_warped``), never worse than where it started; several
names start several searches and the best end is kept (the energy distance has local minima: a consistency
student's 2-step time was found at 3.2x the floor from ``edm`` and at 1.7x from ``log_snr_warped``). The
calibration draws come from their own generator: evaluate the fitted grid on fresh draws.

With ``data`` (samples of the data distribution, never the evaluation ones) the objective is distributional instead:
the energy distance $2E\|X - Y\| - E\|X - X'\| - E\|Y - Y'\|$ of the few-step samples to ``data``, through 64
fixed projections (`scoresde.evaluation.metrics.sliced_energy_distance`, $O(n \log n)$, so ``n`` can be 10^4-10^5: the
statistic's noise, not the optimiser, limits such a fit), with the sampler's noise fixed across evaluations
(common random numbers). It needs no tight solve, so it also fits the grid
of a stochastic sampler: multistep consistency sampling, whose re-noising makes a trajectory random (Song et al. 2023
chose those times by a search on FID; this is that search on the energy distance).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive_int
from .._io import json_text, write_atomic
from ..processes.artefacts import belongs_to, check_belongs
from ..processes.base import SDE
from ..processes.grids import time_grid
from ..processes.score import ScoreFn
from .base import sampler_options, samplers
from .recipe import Recipe

__all__ = ["GridFit", "fit_grid", "check_grid_sampler", "REFERENCE", "GRID_SAMPLERS"]

REFERENCE = {"sampler": "dpm_solver", "order": 3, "steps": 256, "schedule": "log_snr"}
"""The tight solve the few-step solve is fitted to."""

GRID_SAMPLERS = ("ddim", "dpm_solver", "heun", "unipc", "consistency")
"""The samplers whose grid `fit_grid` fits: the few-step probability-flow solvers (deterministic, so a trajectory
can be matched to the tight solve's) and multistep consistency sampling (fitted to data). The stochastic samplers
(``pc``, ``sde``, ``ddpm``) take hundreds of steps, where the grid's spacing matters little, and have no
trajectory to match; ``ode``'s adaptive methods choose their own steps."""

_STOCHASTIC_OPTIONS = {"eta": 0.0, "s_churn": 0.0}
"""Options that make a grid sampler stochastic, with their deterministic value (a tight-solve fit needs it)."""


@dataclass
class GridFit:
    """A fitted grid: ``times`` (decreasing, float64, ``steps + 1``), the objective ``J`` at the start
    (the best of the named ``start`` grids) and at the end, the objective evaluations spent, and the settings
    (JSON-safe)."""

    times: Tensor
    start_error: float
    error: float
    evaluations: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-safe: the times, the objective at the start and the end, the evaluations and the settings."""
        return {
            "times": self.times.tolist(),
            "start_error": self.start_error,
            "error": self.error,
            "evaluations": self.evaluations,
            **self.settings,
        }

    def recipe(self) -> Recipe:
        """This grid as a `scoresde.samplers.Recipe`: its sampler on its times, with its ``order`` / ``denoise``."""
        options = {k: self.settings[k] for k in ("order", "denoise") if k in self.settings}
        return Recipe(self.sampler, times=self.times.tolist(), options=options, fitted=dict(self.settings))

    def save(self, path: str | Path) -> Path:
        """Write `to_dict` as JSON to ``path``, atomically (a kill leaves the old file or the new one)."""
        return write_atomic(path, json_text(self.to_dict()).encode())

    @classmethod
    def load(cls, path: str | Path, sde: SDE | None = None, model: ScoreFn | None = None) -> GridFit:
        """The grid `save` wrote (``scoresde fit-grid``): strictly decreasing finite times, a sampler whose grid
        `fit_grid` fits (`GRID_SAMPLERS`), and, given ``sde`` and ``model``, fitted for them (`check`); else a
        one-line ``ValueError`` naming the file and what is wrong. Plain JSON: nothing in the file is executed."""
        try:
            record = json.loads(Path(path).read_text())
            times = torch.tensor([float(t) for t in record["times"]], dtype=torch.float64)
            fit = cls(
                times,
                float(record.get("start_error", math.nan)),
                float(record.get("error", math.nan)),
                int(record.get("evaluations", 0)),
                {k: v for k, v in record.items() if k not in ("times", "start_error", "error", "evaluations")},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path} is not a grid written by scoresde fit-grid ({exc})") from None
        if times.numel() < 2 or not bool(torch.isfinite(times).all()) or not bool((times.diff() < 0).all()):
            raise ValueError(f"{path} is not a grid written by scoresde fit-grid (its times must decrease strictly)")
        if fit.sampler not in GRID_SAMPLERS:
            raise ValueError(
                f"{path} names sampler {fit.sampler!r}, whose grid scoresde fit-grid does not fit; a grid file names "
                f"one of: {', '.join(GRID_SAMPLERS)}"
            )
        if record := fit.settings.get("steps"):
            if record != fit.steps:
                raise ValueError(f"{path} says {record} steps but holds {fit.steps + 1} times; refit it")
        return fit if sde is None or model is None else fit.check(sde, model, path)

    def check(self, sde: SDE, model: ScoreFn, path: str | Path = "the grid") -> GridFit:
        """This grid, if it was fitted for ``model`` of ``sde`` (`scoresde.processes.artefacts`); else a one-line
        ``ValueError`` naming what differs and how to fit one."""
        remedy = (
            f"fit one for this model: scoresde fit-grid --checkpoint RUN --sampler {self.sampler} --steps {self.steps}"
        )
        check_belongs(self.settings.get("belongs_to"), belongs_to(sde, model), path, "grid", remedy)
        return self

    @property
    def sampler(self) -> str | None:
        """The sampler the grid was fitted for (None when the file does not say)."""
        return self.settings.get("sampler")

    @property
    def steps(self) -> int:
        """The number of steps of the grid (``len(times) - 1``)."""
        return self.times.numel() - 1


def check_grid_sampler(sampler: str) -> str:
    """``sampler`` if `fit_grid` fits its grid (`GRID_SAMPLERS`), else a one-line ``ValueError`` listing those."""
    check_in_registry("sampler", sampler, samplers())
    if sampler not in GRID_SAMPLERS:
        raise ValueError(
            f"fit-grid fits the grid of a few-step solver, not of sampler {sampler!r}; one of: "
            f"{', '.join(GRID_SAMPLERS)}"
        )
    return sampler


def _times_from(theta: np.ndarray, lam_T: float, lam_min: float, sde: SDE, t_min: float) -> Tensor:
    """The grid whose steps cover the softmax(theta) shares of the log-SNR interval."""
    share = np.exp(theta - theta.max())
    lam = lam_T + (lam_min - lam_T) * np.concatenate([[0.0], np.cumsum(share / share.sum())])
    t = sde.t_from_log_snr(torch.tensor(lam, dtype=torch.float64))
    t[0], t[-1] = sde.T, t_min
    return t


def fit_grid(
    sde: SDE,
    score_fn: ScoreFn,
    sampler: str,
    steps: int,
    shape: tuple[int, ...],
    *,
    n: int = 1024,
    t_min: float | None = None,
    iterations: int = 400,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    data: Tensor | None = None,
    start: str | Sequence[str] = "log_snr_warped",
    **options,
) -> GridFit:
    r"""Fit the ``steps``-step grid of ``sampler`` (with its ``options``; ``denoise=False`` unless given, so NFE =
    steps for DDIM and DPM-Solver) to ``score_fn`` on ``n`` calibration draws of shape ``shape[1:]`` (module
    docstring; with ``data`` ``[m, ...]``: the energy distance to it). Returns a `GridFit`; pass ``fit.times`` as
    `scoresde.sample`'s ``schedule``."""
    from scipy.optimize import minimize

    from .._stats import sliced_energy_distance
    from .sampling import sample

    steps = check_positive_int("steps", steps)
    iterations = check_positive_int("iterations", iterations)
    check_grid_sampler(sampler)
    if steps < 2:
        raise ValueError(f"a grid of {steps} step has no interior time to fit; steps must be >= 2")
    noisy = [f"{k}={options[k]}" for k, v in _STOCHASTIC_OPTIONS.items() if options.get(k, v) != v]
    if data is None and (noisy or sampler == "consistency"):
        raise ValueError(
            f"a stochastic solve ({sampler} {' '.join(noisy)}) has no trajectory to match to the tight solve's: "
            "fit it to data (data=...; scoresde fit-grid --to-data)"
        )
    if "denoise" in sampler_options(sampler):
        options.setdefault("denoise", False)
    t_min = sde.check_t_min(t_min)
    generator = generator or torch.Generator().manual_seed(0)
    x_T = sde.prior_sampling((check_positive_int("n", n), *shape[1:]), generator, dtype=dtype)
    noise_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    if data is not None:
        if data.shape[1:] != x_T.shape[1:] or not bool(torch.isfinite(data).all()):
            raise ValueError(f"data must be finite samples shaped [m, {', '.join(map(str, shape[1:]))}], got "
                             f"{tuple(data.shape)}")  # fmt: skip
        data = data.to(torch.float64).reshape(len(data), -1)
    else:
        with torch.no_grad():
            reference = sample(sde, score_fn, x_T.shape, x_T=x_T, t_min=t_min, denoise=False, dtype=dtype,
                               **REFERENCE).x  # fmt: skip
    lam_T, lam_min = sde.log_snr(torch.tensor([sde.T, t_min], dtype=torch.float64)).tolist()
    count = [0]

    def objective(theta: np.ndarray) -> float:
        count[0] += 1
        grid = _times_from(theta, lam_T, lam_min, sde, t_min)
        if not bool((grid[1:] < grid[:-1]).all()):
            return float("inf")
        with torch.no_grad():
            x = sample(sde, score_fn, x_T.shape, sampler, schedule=grid, x_T=x_T,
                       generator=torch.Generator().manual_seed(noise_seed), **options).x  # fmt: skip
        if data is not None:
            error = sliced_energy_distance(x.to(torch.float64).reshape(len(x), -1), data, 64)
        else:
            error = float((x - reference).reshape(len(x), -1).pow(2).sum(1).mean())
        return error if np.isfinite(error) else float("inf")

    starts = [start] if isinstance(start, str) else list(start)
    start_error, best, best_error = float("inf"), None, float("inf")
    for name in starts:  # each search ends no worse than its start; the best end wins
        lam_start = sde.log_snr(time_grid(sde, steps, name, t_min)).numpy()
        theta0 = np.log(np.clip(np.diff(lam_start) / (lam_min - lam_T), 1e-12, None))
        error0 = objective(theta0)
        start_error = min(start_error, error0)
        result = minimize(objective, theta0, method="Nelder-Mead",
                          options={"maxfev": iterations, "xatol": 1e-4, "fatol": 1e-10})  # fmt: skip
        theta, error = (result.x, float(result.fun)) if result.fun < error0 else (theta0, error0)
        if best is None or error < best_error:  # every end infinite: the first start, as a single search returns
            best, best_error = theta, error
    target = REFERENCE if data is None else {"energy_distance_to_data": len(data)}
    settings = {"sampler": sampler, "steps": steps, "n": n, "t_min": t_min, "reference": target, "start": starts,
                "belongs_to": belongs_to(sde, score_fn),
                **{k: v for k, v in options.items() if isinstance(v, (int, float, str, bool))}}  # fmt: skip
    return GridFit(
        times=_times_from(best, lam_T, lam_min, sde, t_min),
        start_error=start_error,
        error=best_error,
        evaluations=count[0],
        settings=settings,
    )
