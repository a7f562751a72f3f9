r"""`sample`: the one entry point over the sampler registry (the grid built once, the inputs and the model's
declaration checked once at the boundary, every score evaluation counted)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, renamed_t_min
from .._io import json_safe
from ..processes.base import SDE, ScoreFn, check_sde
from ..processes.grids import EDM_RHO, LOG_SNR_WARP, grid_settings, time_grid
from ..processes.seam import CountingScore, as_score, require, spec_of
from .base import (
    SampleResult,
    Sampling,
    algorithm_options,
    get_sampler,
    grid_defaults,
    honours_constraint,
    model_kind,
    sampler_options,
    samplers,
)
from .fitted_solver import FittedSolver
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


def _solver_settings(solver, sampler, schedule, steps, t_min, options) -> tuple:
    """The sampler, grid and options of a fitted ``solver``; a one-line ``ValueError`` for a clash with them."""
    if not isinstance(solver, FittedSolver):
        raise TypeError(f"solver must be a FittedSolver (FittedSolver.load(path)), got {type(solver).__name__}")
    clashes = [name for name, value in (("sampler", sampler if sampler != "fitted" else None), ("schedule", schedule),
               ("steps", steps if steps != solver.steps else None), ("t_min", t_min)) if value is not None]  # fmt: skip
    clashes += sorted(set(options) & set(solver.options()))
    if clashes:
        raise ValueError(
            f"a fitted solver sets its own sampler, grid and coefficients; drop {', '.join(clashes)} "
            f"(it has {solver.steps} steps)"
        )
    return "fitted", solver.times, None, None, {**options, **solver.options()}


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    sampler: str | None = None,
    *,
    solver: Any = None,
    steps: int | None = None,
    schedule: str | Sequence[float] | Tensor | None = None,
    t_min: float | None = None,
    rho: float = EDM_RHO,
    warp: float = LOG_SNR_WARP,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    x_T: Tensor | None = None,
    constraint: Callable[[Tensor, float], Tensor] | None = None,
    x0_range: tuple[float, float] | None = None,
    threshold_percentile: float | None = None,
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
        sampler: a name from `samplers` (an unknown name raises, listing the valid ones); default ``pc``, or
            ``fitted`` with a ``solver``.
        solver: a `scoresde.samplers.solver_fit.FittedSolver` (`FittedSolver.load` checks a file against the
            model): the ``fitted`` sampler on its times with its coefficients (``steps``, ``schedule`` and
            ``t_min`` come from it).
        steps: number of steps of the time grid (each sampler declares its default).
        schedule: the grid's spacing (a name from ``GRIDS``; each sampler declares its default), or a strictly
            decreasing sequence of times in ``(0, T]`` (then ``steps`` and ``t_min`` are not used).
        t_min: the grid's last time (default ``sde.sampling_t_min``); ``eps=`` is its deprecated name.
        rho: the exponent of the ``edm`` schedule.
        warp: the exponent of the ``log_snr_warped`` schedule.
        generator: the only source of randomness (prior draw and every noise), for reproducibility.
        device: of the samples (default: the generator's device).
        dtype: of the samples (default: torch's default dtype).
        progress: show a progress bar over the steps (when the output is a terminal).
        return_trajectory: keep the states on the time grid in ``result.trajectory``.
        x_T: start from this prior draw instead of sampling one (e.g. to compare samplers on the same noise).
        constraint: ``constraint(x, t) -> x`` applied after every step (e.g. inpainting's replacement of the
            known part); only samplers that step state by state accept one (``pc``, ``ddim``).
        x0_range: ``(low, high)``, the data's range in the model's space: every score evaluation's denoised
            estimate is clipped to it (`ThresholdedScore`; off by default, recorded in ``settings``).
        threshold_percentile: with ``x0_range``, dynamic thresholding at this percentile (Imagen: 99.5) instead of
            static clipping.
        **options: the sampler's own options (see `sampler_options`); unknown ones raise.
    """
    t_min = renamed_t_min(t_min, options.pop("eps", None), "sample")
    check_sde(sde)
    if solver is not None:
        sampler, schedule, steps, t_min, options = _solver_settings(solver, sampler, schedule, steps, t_min, options)
    sampler = "pc" if sampler is None else sampler
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got {generator!r}"
        )
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype (e.g. torch.float64), got {dtype!r}")
    own = algorithm_options(sampler)
    needs = model_kind(sampler)
    latent = spec_of(score_fn).decoder
    if needs == "score":
        score_fn = as_score(sde, score_fn, f"sampler {sampler!r}")
    else:
        require(score_fn, f"sampler {sampler!r}", output=needs)
    unknown = sorted(set(options) - set(own))
    if unknown:
        valid = ", ".join(sampler_options(sampler))
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {sampler!r}; valid options are: {valid}")
    if constraint is not None and not honours_constraint(sampler):
        accepting = ", ".join(name for name in samplers() if honours_constraint(name))
        raise ValueError(
            f"sampler {sampler!r} does not apply a constraint after its steps; samplers that do: {accepting}"
        )
    if x0_range is not None:
        if not isinstance(x0_range, (tuple, list)) or len(x0_range) != 2:
            raise ValueError(f"x0_range must be two finite numbers low < high, got {x0_range!r}")
        score_fn = ThresholdedScore(sde, score_fn, *x0_range, percentile=threshold_percentile)
    elif threshold_percentile is not None:
        raise ValueError("threshold_percentile needs x0_range (the data's range it thresholds to)")
    resolved = {**own, **options}
    defaults = grid_defaults(sampler)
    schedule = defaults.schedule if schedule is None else schedule
    steps = defaults.resolve_steps(resolved) if steps is None else steps
    grid = time_grid(sde, steps, schedule, t_min, rho, warp)
    if x_T is None:
        shape = _check_shape(shape)
        if device is None and generator is not None:
            device = generator.device
        x_T = sde.prior_sampling(shape, generator, device=device, dtype=dtype or torch.get_default_dtype())
    else:
        check_finite("x_T", x_T)
        if tuple(x_T.shape) != _check_shape(shape):
            raise ValueError(f"x_T must have the requested shape {tuple(shape)}, got {tuple(x_T.shape)}")
    score = CountingScore(score_fn)
    run = Sampling(sde, score, generator, progress, return_trajectory, constraint)
    with torch.no_grad():
        x = get_sampler(sampler)(run, x_T, grid, **options)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(
            f"sampler {sampler!r} produced non-finite samples: the score or the sampler diverged on this grid "
            f"({len(grid) - 1} steps); check the model's score, or take more steps"
        )
    trajectory, times = run.trajectory()
    settings = {**resolved, **grid_settings(grid, schedule, rho, warp)}
    settings.update(x0_range=None if x0_range is None else repr(tuple(float(v) for v in x0_range)))
    settings.update(threshold_percentile=threshold_percentile)
    settings = json_safe(settings)
    return SampleResult(
        x=x,
        nfe=score.calls,
        trajectory=trajectory,
        times=times,
        sampler=sampler,
        settings=settings,
        log_density=None if run.log_density is None else run.log_density.detach().to(torch.float64).cpu(),
        decoded=score_fn.decode(x) if latent else None,
    )
