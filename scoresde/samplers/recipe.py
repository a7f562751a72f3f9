"""How to sample, said once: a `Recipe` names the sampler, its grid (steps and a schedule, or the times themselves),
its options and the fitted numbers if any. A fitted grid (`scoresde.samplers.GridFit.recipe`), a fitted solver
(`scoresde.samplers.FittedSolver.recipe`), a distilled student's own sampling and a run kind's default are recipes;
`sample(sde, model, shape, recipe)` takes one, and `choose_recipe` combines a run's recipe, an artefact's and a
user's choices (conflicts are one line)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Recipe", "choose_recipe"]


@dataclass(frozen=True)
class Recipe:
    """One way to sample.

    Attributes:
        sampler: a registered sampler's name (`scoresde.samplers.samplers`).
        steps: the grid's steps (None: the sampler's default; with ``times``, their intervals).
        schedule: the grid's spacing, a name from `scoresde.samplers.GRIDS` (None: the sampler's default).
        times: explicit decreasing times (a fitted grid's or solver's); ``schedule`` is then unused.
        options: the sampler's own options (and ``t_min``, ``rho``, ``warp``), e.g. ``{"order": 2}``.
        fitted: what an artefact was fitted for and how (its JSON-safe settings), or None.
        fixed: the model samples only with this sampler (a distilled student): another is refused.
    """

    sampler: str = "pc"
    steps: int | None = None
    schedule: str | None = None
    times: tuple[float, ...] | None = None
    options: dict = field(default_factory=dict)
    fitted: dict | None = None
    fixed: bool = False

    def __post_init__(self) -> None:
        if self.times is not None:
            object.__setattr__(self, "times", tuple(float(t) for t in self.times))
            object.__setattr__(self, "steps", len(self.times) - 1)

    @classmethod
    def of(cls, sampler: str, *, steps: int | None = None, schedule: Any = None, **options: Any) -> Recipe:
        """The recipe of the keyword form ``sample(..., sampler, steps=..., schedule=..., **options)``: a named
        ``schedule`` stays a name, a sequence of times becomes ``times``."""
        named = schedule is None or isinstance(schedule, str)
        return cls(sampler, steps, schedule if named else None, None if named else schedule, options)

    def sample_kwargs(self) -> dict[str, Any]:
        """The keyword form of `scoresde.sample` that this recipe is: ``sampler``, ``steps``, ``schedule`` (a name,
        or the times) and the options."""
        grid = {"schedule": list(self.times)} if self.times is not None else {}
        grid = grid or ({"schedule": self.schedule} if self.schedule is not None else {})
        return {"sampler": self.sampler, "steps": self.steps, **grid, **self.options}

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the sampler, steps, schedule or times, options and fitted settings."""
        return {"sampler": self.sampler, "steps": self.steps, "schedule": self.schedule,
                "times": None if self.times is None else list(self.times), "options": dict(self.options),
                "fitted": self.fitted}  # fmt: skip


def choose_recipe(
    own: Recipe | None = None,
    *,
    sampler: str | None = None,
    steps: int | None = None,
    options: dict | None = None,
    artefact: Recipe | None = None,
) -> Recipe:
    """The recipe a run is sampled with, from its ``own`` (its kind's: a distilled student's ``fixed`` one, or
    None), a fitted ``artefact``'s (a grid's times, its sampler and its ``order`` / ``denoise``; a solver's whole
    recipe) and the user's ``sampler``, ``steps`` and ``options``, which are never overwritten:

    - a fitted grid gives the times, and its sampler and settings unless the user chose another; ``steps`` must
      then be the grid's; a fitted solver is its own recipe, and any other choice clashes with it;
    - a ``fixed`` recipe (a student) refuses another sampler and takes its own steps and options;
    - an ``own`` recipe that is not fixed (a flow map's jumps) is the default when the user names no other sampler;
    - otherwise the user's ``sampler`` (default ``dpm_solver``).

    Conflicts are one-line ``ValueError`` s."""
    options = dict(options or {})
    if artefact is not None and artefact.sampler == "fitted":
        clash = [n for n, v in (("sampler", sampler), ("steps", steps), ("options", options)) if v]
        if clash:
            raise ValueError(f"a fitted solver sets its own sampler, grid and coefficients; drop {', '.join(clash)}")
        return artefact
    times = fitted = None
    if artefact is not None:
        sampler = sampler or artefact.sampler
        if sampler == artefact.sampler:
            options.update({k: v for k, v in artefact.options.items() if k not in options})
        if steps not in (None, artefact.steps):
            raise ValueError(f"the grid has {artefact.steps} steps; drop --steps or pass --steps {artefact.steps}")
        steps, times, fitted = artefact.steps, artefact.times, artefact.fitted
    if own is not None and not own.fixed and sampler in (None, own.sampler) and times is None:
        return Recipe(own.sampler, steps or own.steps, own.schedule, None, {**own.options, **options})
    if own is None or not own.fixed:
        return Recipe(sampler or "dpm_solver", steps, None, times, options, fitted)
    if sampler not in (None, own.sampler):
        raise ValueError(f"this model samples with --sampler {own.sampler}, not {sampler}")
    options.update({k: v for k, v in own.options.items() if k not in options})
    return Recipe(own.sampler, own.steps, own.schedule, times, options, fitted or own.fitted, True)
