r"""`sample`: the one entry point over the sampler registry (the grid built once, the inputs and the model's
declaration checked once at the boundary, every score evaluation counted)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, renamed_t_min
from .._io import json_safe
from ..processes.base import SDE, check_sde
from ..processes.grids import EDM_RHO, LOG_SNR_WARP, grid_settings, time_grid
from ..processes.score import ScoreFn
from ..processes.seam import CountingScore, as_score, require, spec_of
from .base import (
    SampleResult,
    Sampling,
    algorithm_options,
    check_order,
    get_sampler,
    grid_defaults,
    honours_constraint,
    model_kind,
    sampler_options,
    samplers,
)
from .fitted_solver import FittedSolver
from .recipe import Recipe
from .thresholding import ThresholdedScore

__all__ = ["sample"]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) >= 2 and all(d >= 1 and d == s for d, s in zip(dims, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(
            f"shape must be a sequence [B, ...] of at least two positive integers (batch first), got {shape!r}"
        )
    return dims


_GRID_KEYS = ("steps", "schedule", "t_min", "rho", "warp")
_SAMPLE_KEYS = (*_GRID_KEYS, "solver", "x0_range", "threshold_percentile")


def _recipe_of(sampler: str | Recipe | None, options: dict) -> tuple[Recipe, dict]:
    """The recipe that ``sampler`` (a name or a `Recipe`) and the keyword options (``steps``, a fitted ``solver``,
    the sampler's own) make, and the options that are not the recipe's (the grid's ``schedule`` / ``t_min`` /
    ``rho`` / ``warp``, ``x0_range``, ``threshold_percentile``). A keyword that clashes with a recipe is one line."""
    solver, named = options.pop("solver", None), None
    if solver is not None:
        if not isinstance(solver, FittedSolver):
            raise TypeError(f"solver must be a FittedSolver (FittedSolver.load(path)), got {type(solver).__name__}")
        named = None if sampler in (None, "fitted") else sampler  # a sampler named beside the solver clashes
        sampler = solver.recipe()
    if not isinstance(sampler, Recipe):
        return Recipe(
            "pc" if sampler is None else sampler, options.pop("steps", None), options=_pop_own(options)
        ), options
    recipe, steps = sampler, options.pop("steps", None)
    fixed_grid = recipe.times is not None or recipe.schedule is not None
    given = {"sampler": named is not None, "schedule": options.get("schedule") is not None and fixed_grid,
             "t_min": options.get("t_min") is not None and recipe.times is not None,
             "steps": steps is not None and recipe.steps not in (None, steps)}  # fmt: skip
    clashes = [k for k, v in given.items() if v] + sorted(set(options) & set(recipe.options))
    if clashes:
        owner = "a fitted solver" if recipe.sampler == "fitted" else "the recipe"
        raise ValueError(
            f"{owner} sets its own sampler, grid and coefficients; drop {', '.join(clashes)} (it has {recipe.steps} "
            "steps)"
        )
    if recipe.steps is None and steps is not None:
        recipe = replace(recipe, steps=steps)
    return recipe, {**options, **{k: v for k, v in recipe.options.items() if k in _GRID_KEYS}}


def _pop_own(options: dict) -> dict:
    """The options that are the sampler's own (everything but `sample`'s grid and thresholding keywords), removed
    from ``options``."""
    return {k: options.pop(k) for k in list(options) if k not in _SAMPLE_KEYS}


def _model_for(sde: SDE, score_fn: ScoreFn, sampler: str, x0_range, threshold_percentile) -> ScoreFn:
    """``score_fn`` as the sampler needs it, its declaration checked once: a score (converted from eps / x0 / v),
    or the output kind the sampler declares; thresholded to ``x0_range`` when asked."""
    needs = model_kind(sampler)
    if needs == "score":
        score_fn = as_score(sde, score_fn, f"sampler {sampler!r}")
    elif needs == "flow_map":
        require(score_fn, f"sampler {sampler!r}", flow_map=True, argument="score_fn")
    else:
        require(score_fn, f"sampler {sampler!r}", output=needs, argument="score_fn")
    if x0_range is not None:
        if not isinstance(x0_range, (tuple, list)) or len(x0_range) != 2:
            raise ValueError(f"x0_range must be two finite numbers low < high, got {x0_range!r}")
        return ThresholdedScore(sde, score_fn, *x0_range, percentile=threshold_percentile)
    if threshold_percentile is not None:
        raise ValueError("threshold_percentile needs x0_range (the data's range it thresholds to)")
    return score_fn


def _check_options(recipe: Recipe, constraint) -> dict:
    """The sampler's own options with their defaults filled in; unknown options and a constraint the sampler does
    not apply are one line each."""
    own = algorithm_options(recipe.sampler)
    unknown = sorted(set(recipe.options) - set(own) - set(_GRID_KEYS))
    if unknown:
        valid = ", ".join(sampler_options(recipe.sampler))
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for sampler {recipe.sampler!r}; valid options are: {valid}"
        )
    if constraint is not None and not honours_constraint(recipe.sampler):
        accepting = ", ".join(name for name in samplers() if honours_constraint(name))
        raise ValueError(
            f"sampler {recipe.sampler!r} does not apply a constraint after its steps; samplers that do: {accepting}"
        )
    resolved = {**own, **{k: v for k, v in recipe.options.items() if k not in _GRID_KEYS}}
    if "order" in resolved:
        check_order(recipe.sampler, resolved["order"])
    return resolved


def _prior(sde: SDE, shape, x_T: Tensor | None, generator, device, dtype) -> Tensor:
    """The prior draw ``x_T`` (checked when given), or one drawn from ``generator`` on ``device`` in ``dtype``."""
    if x_T is not None:
        check_finite("x_T", x_T)
        if tuple(x_T.shape) != _check_shape(shape):
            raise ValueError(f"x_T must have the requested shape {tuple(shape)}, got {tuple(x_T.shape)}")
        return x_T
    shape = _check_shape(shape)
    if device is None and generator is not None:
        device = generator.device
    return sde.prior_sampling(shape, generator, device=device, dtype=dtype or torch.get_default_dtype())


def _check_types(generator, dtype) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got {generator!r}"
        )
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}")


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    sampler: str | Recipe | None = None,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    x_T: Tensor | None = None,
    constraint: Callable[[Tensor, float], Tensor] | None = None,
    **options: Any,
) -> SampleResult:
    r"""Draw samples ``[B, ...]`` of the data distribution by reversing ``sde`` with ``score_fn``.

    The prior draw $x_T \sim \mathcal N(0, \text{prior\_std}^2 I)$ (or the given ``x_T``) is carried
    from ``T`` to a small time ``t_min`` by the named sampler on the time grid
    ``time_grid(sde, steps, schedule, t_min, rho, warp)``, then by default denoised with Tweedie's formula
    $\hat x_0 = (x + \sigma^2 s_\theta)/\alpha$.

    Args:
        sde: the forward process the score belongs to.
        score_fn: the model, ``score_fn(x [B, ...], t [B]) -> [B, ...]``, with its declaration
            (`scoresde.processes.seam.ModelSpec`): a score (``eps`` / ``x0`` / ``v`` outputs are converted), or a
            consistency model for the ``consistency`` sampler; checked once here.
        shape: ``[B, ...]`` of the samples.
        sampler: a `scoresde.samplers.Recipe` (how to sample, said once: a fitted grid's or solver's ``.recipe()``,
            a student's), or a sampler's name from `samplers` with the recipe's parts as keywords (an unknown name
            raises, listing the valid ones); default ``pc``.
        generator: the only source of randomness (prior draw and every noise), for reproducibility.
        device: of the samples (default: the generator's device).
        dtype: of the samples (default: torch's default dtype).
        progress: show a progress bar over the steps (when the output is a terminal).
        return_trajectory: keep the states on the time grid in ``result.trajectory``.
        x_T: start from this prior draw instead of sampling one (e.g. to compare samplers on the same noise).
        constraint: ``constraint(x, t) -> x`` applied after every step (e.g. inpainting's replacement of the
            known part); only samplers that step state by state accept one (``pc``, ``ddim``).
        **options: the grid's, with a sampler's name: ``steps`` (each sampler declares its default), ``schedule``
            (a name from ``GRIDS``, or a strictly decreasing sequence of times in ``(0, T]``: then ``steps`` and
            ``t_min`` are not used), ``t_min`` (default ``sde.sampling_t_min``; ``eps=`` is its deprecated name),
            ``rho`` (the ``edm`` schedule's exponent), ``warp`` (the ``log_snr_warped`` schedule's); ``solver``, a
            `scoresde.samplers.FittedSolver` (the same as ``sampler=solver.recipe()``); ``x0_range = (low, high)``,
            the data's range in the model's space, to which every score evaluation's denoised estimate is clipped
            (`ThresholdedScore`), and ``threshold_percentile`` (dynamic thresholding at that percentile, Imagen:
            99.5); and the sampler's own options (see `sampler_options`). Unknown ones raise.
    """
    if "eps" in options or "t_min" in options:
        options["t_min"] = renamed_t_min(options.pop("t_min", None), options.pop("eps", None), "sample")
    check_sde(sde)
    _check_types(generator, dtype)
    recipe, extra = _recipe_of(sampler, options)
    x0_range, percentile = extra.pop("x0_range", None), extra.pop("threshold_percentile", None)
    resolved = _check_options(recipe, constraint)
    latent = spec_of(score_fn).decoder
    score_fn = _model_for(sde, score_fn, recipe.sampler, x0_range, percentile)
    defaults = grid_defaults(recipe.sampler)
    schedule = next(s for s in (recipe.times and list(recipe.times), recipe.schedule, extra.get("schedule"),
                                defaults.schedule) if s is not None)  # fmt: skip
    steps = defaults.resolve_steps(resolved) if recipe.steps is None else recipe.steps
    rho, warp = extra.get("rho", EDM_RHO), extra.get("warp", LOG_SNR_WARP)
    grid = time_grid(sde, steps, schedule, extra.get("t_min"), rho, warp)
    x_T = _prior(sde, shape, x_T, generator, device, dtype)
    score = CountingScore(score_fn)
    run = Sampling(sde, score, generator, progress, return_trajectory, constraint)
    with torch.no_grad():
        x = get_sampler(recipe.sampler)(run, x_T, grid, **{k: resolved[k] for k in recipe.options if k in resolved})
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"sampler {recipe.sampler!r} produced non-finite samples: the score or the sampler diverged on this grid "
            f"({len(grid) - 1} steps); check the model's score, or take more steps"
        )
    trajectory, times = run.trajectory()
    settings = {**resolved, **grid_settings(grid, schedule, rho, warp)}
    settings.update(x0_range=None if x0_range is None else repr(tuple(float(v) for v in x0_range)))
    settings.update(threshold_percentile=percentile)
    log_density = None if run.log_density is None else run.log_density.detach().to(torch.float64).cpu()
    return SampleResult(x=x, nfe=score.calls, trajectory=trajectory, times=times, sampler=recipe.sampler,
                        settings=json_safe(settings), log_density=log_density,
                        decoded=score_fn.decode(x) if latent else None)  # fmt: skip
