"""The fitted solver as a run artefact: its times, its base's order and its per-step corrections, with what it was
fitted for (`scoresde.processes.artefacts`), saved as plain JSON and loaded with checks (`FittedSolver.load`).
`scoresde.samplers.solver_fit.fit_solver` fits one; ``sample(sde, model, shape, fit.recipe())`` samples it."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .._io import json_text, write_atomic
from ..processes.artefacts import belongs_to, check_belongs
from ..processes.base import SDE
from ..processes.score import ScoreFn
from .recipe import Recipe

__all__ = ["FittedSolver", "FORMAT"]

FORMAT = "scoresde-fitted-solver-1"


@dataclass
class FittedSolver:
    """A fitted solver: ``times`` (decreasing, float64, ``steps + 1``), the base's ``order``, the per-step
    ``corrections`` (``steps`` lists of ``m`` numbers), the objective at the start and at the end, and the settings
    (JSON-safe: the base, the objective, the calibration, what it belongs to)."""

    times: Tensor
    order: int
    corrections: list[list[float]]
    start_error: float
    error: float
    settings: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """The number of steps (= NFE: the solver ends at the grid's last time without a final denoising)."""
        return self.times.numel() - 1

    def options(self) -> dict:
        """The options of the ``fitted`` sampler that sample this solver (with ``schedule=self.times``)."""
        return {"order": self.order, "corrections": self.corrections, "lower_order_final": True, "denoise": False}

    def recipe(self) -> Recipe:
        """This solver as a `scoresde.samplers.Recipe`: the ``fitted`` sampler on its times with its coefficients."""
        return Recipe("fitted", times=self.times.tolist(), options=self.options(), fitted=dict(self.settings))

    def to_dict(self) -> dict:
        """JSON-safe: the format, times, order, corrections, the objective at the start and the end, the settings."""
        return {
            "format": FORMAT,
            "times": self.times.tolist(),
            "order": self.order,
            "corrections": self.corrections,
            "start_error": self.start_error,
            "error": self.error,
            **self.settings,
        }

    def save(self, path: str | Path) -> Path:
        """Write `to_dict` as JSON to ``path`` (its folder created), atomically."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, json_text(self.to_dict()).encode())

    def check(self, sde: SDE, model: ScoreFn, path: str | Path = "the solver") -> FittedSolver:
        """This solver, if it was fitted for ``model`` of ``sde``; else a one-line ``ValueError``."""
        remedy = f"fit one for this model: scoresde fit-solver --checkpoint RUN --steps {self.steps}"
        check_belongs(self.settings.get("belongs_to"), belongs_to(sde, model), path, "fitted solver", remedy)
        return self

    @classmethod
    def load(cls, path: str | Path, sde: SDE | None = None, model: ScoreFn | None = None) -> FittedSolver:
        """The solver `save` wrote (``scoresde fit-solver``), checked: its format, strictly decreasing finite times,
        an order of 1–3, one list of finite corrections per step, and, given ``sde`` and ``model``, fitted for them;
        else a one-line ``ValueError`` naming the file. Plain JSON: nothing in the file is executed."""
        what = f"{path} is not a solver written by scoresde fit-solver"
        try:
            record = json.loads(Path(path).read_text())
            if not isinstance(record, dict) or record.get("format") != FORMAT:
                raise ValueError(f"format {record.get('format') if isinstance(record, dict) else None!r}")
            times = torch.tensor([float(t) for t in record["times"]], dtype=torch.float64)
            corrections = [[float(c) for c in step] for step in record["corrections"]]
            order = record["order"]
            settings = {k: v for k, v in record.items() if k not in ("format", "times", "order", "corrections")}
            settings.pop("start_error", None), settings.pop("error", None)
            fit = cls(times, order, corrections, float(record.get("start_error", math.nan)),
                      float(record.get("error", math.nan)), settings)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{what} ({exc})") from None
        if times.numel() < 2 or not bool(torch.isfinite(times).all()) or not bool((times.diff() < 0).all()):
            raise ValueError(f"{what} (its times must decrease strictly)")
        if isinstance(order, bool) or order not in (1, 2, 3):
            raise ValueError(f"{what} (order must be 1, 2 or 3, got {order!r})")
        if len(corrections) != fit.steps or not all(math.isfinite(c) for step in corrections for c in step):
            raise ValueError(f"{what} (it needs one list of finite corrections per step, {fit.steps})")
        if settings.get("steps") not in (None, fit.steps):
            raise ValueError(f"{what} (it says {settings['steps']} steps but holds {fit.steps + 1} times)")
        return fit if sde is None or model is None else fit.check(sde, model, path)
