r"""Sampling from a score-based model: one entry point, `sample`, over a registry of samplers.

========================  =====================================================================
``pc``                    predictor–corrector (Song et al. 2021), registries of predictors/correctors
``ode``                   probability-flow ODE with torchdiffeq (or scipy ``solve_ivp``)
``sde``                   reverse-time SDE with torchsde
``ddim``                  DDIM with eta (Song, Meng & Ermon 2021)
``heun``                  EDM's Heun sampler with stochastic churn (Karras et al. 2022)
``dpm_solver``            DPM-Solver++ multistep, orders 1–3 (Lu et al. 2022)
========================  =====================================================================
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from .._checks import check_finite
from ..sde import SDE, ScoreFn, check_sde
from . import fast, ode, pc, reverse_sde  # noqa: F401  (registration)
from .base import CountingScore, SampleResult, Sampling, get_sampler, register_sampler, sampler_options, samplers
from .grids import GRIDS, time_grid
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .inpaint import INPAINT_METHODS, MASKS, inpaint, named_mask
from .ode import ProbabilityFlow
from .pc import correctors, predictors, register_corrector, register_predictor

__all__ = [
    "sample",
    "SampleResult",
    "Sampling",
    "samplers",
    "sampler_options",
    "register_sampler",
    "predictors",
    "correctors",
    "register_predictor",
    "register_corrector",
    "time_grid",
    "GRIDS",
    "ProbabilityFlow",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "inpaint",
    "named_mask",
    "MASKS",
    "INPAINT_METHODS",
]


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(int(s) for s in shape)
        ok = len(dims) >= 2 and all(d >= 1 and d == s for d, s in zip(dims, shape))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"shape must be a sequence [B, ...] of at least two positive integers (batch first), got {shape!r}")
    return dims


def sample(
    sde: SDE,
    score_fn: ScoreFn,
    shape: Sequence[int],
    sampler: str = "pc",
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    x_T: torch.Tensor | None = None,
    **options: Any,
) -> SampleResult:
    r"""Draw samples ``[B, ...]`` of the data distribution by reversing ``sde`` with ``score_fn``.

    The prior draw $x_T \sim \mathcal N(0, \text{prior\_std}^2 I)$ (or the given ``x_T``) is carried
    from ``T`` to a small time ``eps`` by the named sampler, then by default denoised with Tweedie's
    formula $\hat x_0 = (x + \sigma^2 s_\theta)/\alpha$.

    Args:
        sde: the forward process the score belongs to.
        score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
        shape: ``[B, ...]`` of the samples.
        sampler: a name from `samplers` (an unknown name raises, listing the valid ones).
        steps: number of steps of the sampler's time grid (each sampler has its own default).
        generator: the only source of randomness (prior draw and every noise), for reproducibility.
        device: of the samples (default: the generator's device).
        dtype: of the samples (default: torch's default dtype).
        progress: show a progress bar over the steps.
        return_trajectory: keep the states on the time grid in ``result.trajectory``.
        x_T: start from this prior draw instead of sampling one (e.g. to compare samplers on the same noise).
        **options: the sampler's own options (see `sampler_options`); unknown ones raise.
    """
    fn = get_sampler(sampler)
    valid = sampler_options(sampler)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)} for sampler {sampler!r}; valid options are: {', '.join(valid)}")
    check_sde(sde)
    if steps is not None:
        options["steps"] = steps
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
    run = Sampling(sde, score, generator, progress, return_trajectory)
    with torch.no_grad():
        x = fn(run, x_T, **options)
    trajectory, times = run.trajectory()
    settings = {**valid, **options, "steps": options.get("steps", valid.get("steps"))}
    settings = {k: (v if isinstance(v, (int, str, bool, type(None))) or (isinstance(v, float) and math.isfinite(v)) else repr(v))
                for k, v in settings.items()}
    return SampleResult(x=x, nfe=score.calls, trajectory=trajectory, times=times, sampler=sampler, settings=settings)
