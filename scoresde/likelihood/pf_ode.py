r"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, Appendix D.2).

The PF-ODE $dx/dt = v(x, t) = f(t)x - \tfrac12 g(t)^2 s_\theta(x, t)$ is a continuous normalising
flow, so by the instantaneous change of variables (Chen et al. 2018)

$$\log p_{t_{min}}(x) = \log p_T(z) + \int_{t_{min}}^{T} \nabla_x\!\cdot v(x(t), t)\, dt,
\qquad z = x(T),\ x(t_{min}) = x .$$

We integrate the state and the divergence together, by default with the exponential integrator in the
log-SNR of `scoresde.likelihood.exponential_integrator` (``method="ei"``), or with torchdiffeq in ``t`` or in the
log-SNR
$\lambda$ (`scoresde.processes.reverse.ProbabilityFlow`; the divergence of $dx/d\lambda$
integrated in $\lambda$ gives the same integral). The divergence is exact (``D`` vector–Jacobian
products, for small ``D``) or Skilling–Hutchinson's $\mathbb E_\epsilon[\epsilon^\top (\partial v/\partial x)\epsilon]$
with probes drawn once and kept for the whole solve.

With the SDE's prior in place of $p_T$ the result differs from $-\log p_{t_{min}}(x)$ by the prior
mismatch; ``prior_logp`` lets a caller pass the exact $\log p_T$ (the oracle's) to isolate the
integrator's error.

The variational bounds live in `scoresde.likelihood.bounds`, bits per dimension in `scoresde.likelihood.bpd`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._checks import check_finite, check_in_registry, check_positive, check_positive_int, progress_bar, renamed_t_min
from .._distributed import process_world
from ..processes.base import SDE, check_sde
from ..processes.divergence import DIVERGENCES, PROBES, draw_probes, probe_divergences
from ..processes.grids import custom_grid, time_grid
from ..processes.reverse import VARIABLES, ProbabilityFlow
from ..processes.score import ScoreFn
from ..processes.seam import CountingScore, as_score
from ..samplers.ode import ADAPTIVE_METHODS, FIXED_GRID_METHODS
from .exponential_integrator import (
    MAX_ORDER,
    SolverBudgetSpent,
    SolverError,
    batch_norm,
    per_sample_norm,
    solve_exponential,
    step_budget,
)
from .result import LikelihoodResult
from .torchdiffeq_solve import solve_torchdiffeq

__all__ = ["log_likelihood", "check_data", "likelihood_t_min", "LIKELIHOOD_T_MIN", "SOLVERS"]

LIKELIHOOD_T_MIN = 1e-5
r"""Default data end of every likelihood (`log_likelihood`, `bits_per_dim`, `elbo`, `ddpm_bound`, the
``likelihood`` command): the value behind the reference implementation's published bits/dim (Song et al. 2021).
A bits/dim figure is $-\log p_{t_{min}}$ of the data: the smaller ``t_min``, the closer to the data itself
(docs/concepts/likelihood.md shows how the figure moves with it). Samplers keep ``sde.sampling_t_min``."""

DEFAULT_METHOD = "ei"

DEFAULT_VARIABLE = "t"
"""Measured on the oracle (2D and 10D mixtures, VP / sub-VP / VE, dopri5): at equal tolerances, t needed
fewer NFE than log-SNR for the same error (10D VP at 1e-5: 98 NFE and 4.6e-5 nats in t; 158 NFE and 2.9e-4
in log-SNR), so t is the default; log-SNR stays available."""


def check_data(x: Tensor) -> Tensor:
    """Data for a likelihood: a finite floating-point tensor ``[B, ...]``, ``B >= 1``, with at least 2 dimensions."""
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"x must be a floating-point tensor of shape [B, ...] with B >= 1 and at least 2 dimensions, got "
            f"{type(x).__name__ if not isinstance(x, Tensor) else f'{tuple(x.shape)} {x.dtype}'}"
        )
    return check_finite("x", x)


REDUCED_PRECISIONS = (torch.float16, torch.bfloat16)
"""Input dtypes `log_likelihood` promotes to float32: the integral accumulates in the state's dtype, and in fp16
a step's change of log-density (about 1e-3 of its value) rounds away (the change-of-variables term came out exactly
0). A network that should run in reduced precision says so itself (`scoresde.models.ScoreModel.network_dtype`)."""

EXPONENTIAL_SOLVERS = ("ei", "ei_fixed")
SOLVERS = EXPONENTIAL_SOLVERS + ADAPTIVE_METHODS + FIXED_GRID_METHODS
"""Names `log_likelihood` accepts as ``method``: the exponential integrator in log-SNR (``"ei"`` adaptive,
``"ei_fixed"`` on ``steps`` equal log-SNR steps; `scoresde.likelihood.exponential_integrator`) and torchdiffeq's methods
on the probability-flow ODE in ``variable``."""

ERROR_ESTIMATE_LOOSENING = 10.0
"""A torchdiffeq solve's error estimate re-solves at tolerances this much looser (a fixed grid: half the
steps); the difference is the looser solve's error, an upper estimate of the tighter one's."""


def _solve(
    sde: SDE, score: ScoreFn, part: Tensor, probes, options: dict
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
    """``(z, delta [P, B])`` of one batch, and the same from the embedded / looser solve of the error estimate."""
    per_probe = probe_divergences(options["divergence"], probes)
    method, t_min = options["method"], options["t_min"]
    if method in EXPONENTIAL_SOLVERS:
        schedule = None
        if method == "ei_fixed":
            grid = (
                options["grid"] if options["grid"] is not None else time_grid(sde, options["steps"], "log_snr", t_min)
            )
            schedule = (0.5 * sde.log_snr(grid.flip(0))).tolist()
        norm = per_sample_norm if options["error_control"] == "per_sample" else batch_norm
        sol = solve_exponential(
            sde,
            score,
            per_probe,
            part,
            t_min,
            order=options["order"],
            lams=schedule,
            rtol=options["rtol"],
            atol=options["atol"],
            error_norm=norm,
            max_steps=options["max_steps"],
            deadline=_deadline(options),
        )
        return sol.z, sol.delta, sol.z_low, sol.delta_low
    flow = ProbabilityFlow(sde, score, options["variable"])
    span = flow.span(t_min)[::-1]  # from the data end to T
    max_steps = options["max_steps"]
    if max_steps is None:  # the budget of a 4th-order method over the same log-SNR span
        lam = 0.5 * sde.log_snr(torch.tensor([t_min, sde.T], dtype=torch.float64))
        max_steps = step_budget(float(lam[0] - lam[1]), options["rtol"], options["atol"], 4)
    args = (options["rtol"], options["atol"], max_steps, options["steps"], options["error_control"])
    z, delta = solve_torchdiffeq(flow, part, per_probe, span, method, *args, deadline=_deadline(options))
    if not options["error_estimate"]:
        return z, delta, None, None
    rtol, atol, max_steps, steps, control = args
    k = ERROR_ESTIMATE_LOOSENING
    loose = (rtol * k, atol * k, max_steps, max(1, steps // 2), control)
    z_low, delta_low = solve_torchdiffeq(flow, part, per_probe, span, method, *loose, deadline=_deadline(options))
    return z, delta, z_low, delta_low


def _deadline(options: dict) -> float | None:
    """The ``time.monotonic()`` by which a batch's adaptive solve must finish (``max_seconds`` from its start)."""
    return None if options["max_seconds"] is None else time.monotonic() + options["max_seconds"]


def _fallback_options(options: dict, halved: bool = False) -> dict:
    """The options of the fallback solve: ``ei_fixed`` on ``fallback_steps`` equal log-SNR steps (``halved``: half
    as many, the solve whose difference is its error estimate), the other settings kept."""
    steps = options["fallback_steps"] // 2 if halved else options["fallback_steps"]
    return {**options, "method": "ei_fixed", "steps": max(1, steps), "grid": None}


def log_likelihood(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    divergence: str = "exact",
    probe: str = "rademacher",
    n_probes: int = 1,
    method: str = DEFAULT_METHOD,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    t_min: float | None = None,
    variable: str = DEFAULT_VARIABLE,
    generator: torch.Generator | None = None,
    progress: bool = False,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    batch_size: int | None = None,
    max_steps: int | None = None,
    steps: int = 100,
    error_control: str = "per_sample",
    order: int = 3,
    error_estimate: bool = True,
    grid: Sequence[float] | Tensor | None = None,
    eps: float | None = None,
    max_seconds: float | None = None,
    fallback: str | None = "ei_fixed",
    fallback_steps: int = 256,
    shared: bool = True,
) -> LikelihoodResult:
    r"""Per-sample negative log-likelihood $-\log p_{t_{min}}(x)$ (nats) through the probability-flow ODE.

    $$-\log p_{t_{min}}(x) = -\log p_T(z) - \int_{t_{min}}^{T} \nabla_x\!\cdot v(x(t), t)\,dt .$$

    Args:
        sde: the forward process of the model.
        score_fn: the model's score ``score_fn(x, t)``.
        x: data ``[B, ...]`` at time ``t_min``: float32 or float64; float16 / bfloat16 data are promoted to float32
            (`REDUCED_PRECISIONS`; ``settings["promoted_from"]`` says so).
        divergence: ``"exact"`` (full Jacobian trace, ``D`` backward passes per step: small ``D``) or
            ``"hutchinson"`` (``n_probes`` probes of kind ``probe``, fixed for the whole solve; each probe's
            log-density is integrated along the same trajectory, so ``n_probes >= 2`` also measures the probes'
            share of the standard error).
        method: ``"ei"`` (default: the adaptive exponential-integrator multistep in log-SNR of
            `scoresde.likelihood.exponential_integrator`, its error estimate free), ``"ei_fixed"`` (the same on
            ``steps``
            equal log-SNR steps) or a torchdiffeq solver on the PF-ODE in ``variable`` (``dopri5``, ``rk4``, ...;
            ``dopri5`` in ``t`` with ``error_control="batch"`` is the reference implementation's setting).
        rtol: relative tolerance of the state.
        atol: absolute tolerance of the state and of the log-density (nats).
        t_min: the data end of the integral, default `LIKELIHOOD_T_MIN` = 1e-5 (the convention of published
            bits/dim figures; samplers keep their own ``sde.sampling_t_min``); ``eps`` is its deprecated name.
        variable: torchdiffeq methods integrate in ``"t"`` (default) or ``"log_snr"``.
        generator: randomness of the Hutchinson probes.
        progress: progress bar over batches.
        prior_logp: ``z -> log density`` replacing the SDE's prior at ``T`` (e.g. the exact
            ``marginal(sde, T).log_prob`` of an oracle, to measure the integrator alone).
        batch_size: evaluate in batches of this size (default: all at once).
            Under torchrun (an initialised process group), each process evaluates every world-size-th point
            and the results are all-gathered in data order; every process returns the whole result (``shared``;
            ``shared=False`` solves every point here, for a caller that splits the data itself, as
            `scoresde.likelihood.sharded_bits_per_dim` does).
        max_steps: bound on an adaptive solver's steps (default: `step_budget`, about 20 times what a smooth
            solve at these tolerances takes). A solve that cannot finish raises `SolverError` as soon as that is
            known, naming the sample and the time: a model output that is not finite (checked at every
            evaluation), a collapsed step size, or the budget spent.
        steps: number of equal steps of a fixed-grid method (``ei_fixed``, ``rk4``, ...).
        error_control: ``"per_sample"`` (default: every sample meets the tolerance) or ``"batch"``
            (one RMS over the batch, as the reference implementation's flattened solve).
        order: predictor order of the ``ei`` methods (the corrector is one higher).
        grid: ``ei_fixed`` on these times instead of equal log-SNR steps: a strictly decreasing sequence from
            ``T`` (the prior's time: a grid that stops short of it raises) down to the data end, which sets
            ``t_min``.
        error_estimate: estimate each sample's integration error, reported as ``integration_error``:
            free for ``ei`` (the embedded lower-order solution on the same evaluations); for torchdiffeq methods
            a second solve at 10x looser tolerances (or half the steps), its NFE counted.
        max_seconds: wall-clock budget of each batch's adaptive solve (default: none beyond ``max_steps``).
        fallback: ``"ei_fixed"`` (default) or ``None``. An adaptive solve that cannot meet the tolerance within its
            budget (``max_steps``, ``max_seconds``) or whose step size collapses (a stiff flow: an undertrained
            model's) is finished instead by the exponential integrator on ``fallback_steps`` equal log-SNR steps
            (a fixed cost), and again on half as many: their difference, an upper estimate of the finer solve's error
            (the method converges at order 3 and more), is reported in ``integration_error``; the result's
            ``settings["fallback"]`` says which batches, why, and that the tolerance was not met. ``None``: raise
            `SolverError` as before. A model output that is not finite is never finished this way.
    """
    t_min = renamed_t_min(t_min, eps, "log_likelihood")
    check_sde(sde)
    check_data(x)
    promoted = x.dtype if x.dtype in REDUCED_PRECISIONS else None
    if promoted is not None:  # the ODE state and its divergence need float32 at least (fp16 rounds Δt·div to 0)
        x = x.float()
    options = _checked_options(sde, divergence, probe, n_probes, method, rtol, atol, t_min, variable, max_steps,
                               steps, error_control, order, error_estimate, grid)  # fmt: skip
    options.update(_checked_fallback(max_seconds, fallback, fallback_steps))
    batch_size = check_positive_int("batch_size", batch_size) if batch_size is not None else x.shape[0]
    score = CountingScore(as_score(sde, score_fn, "log_likelihood"))
    shard = _distributed_shard(x.shape[0]) if shared else None
    full_batch = x.shape[0]
    local = _solve_batches(sde, score, x if shard is None else x[shard], options, prior_logp or sde.prior_logp,
                           batch_size, probe, n_probes, generator, progress, shard)  # fmt: skip
    local, fell_back = local[:-1], local[-1]
    settings = _settings(options, probe, n_probes, prior_logp is not None)
    if fell_back:
        settings["fallback"] = {"method": "ei_fixed", "steps": options["fallback_steps"], "batches": fell_back,
                                "tolerance_met": False,
                                "error_estimate": "|nll - nll on half the steps| (these batches)"}  # fmt: skip
    if promoted is not None:
        settings["promoted_from"] = str(promoted).removeprefix("torch.")
    nfe = score.calls
    if shard is not None:
        local, nfe = _gather(shard, local, nfe, full_batch)
        settings["processes"] = torch.distributed.get_world_size()
    prior_lp, delta, z, error, probe_nll = local  # probe_nll [B, P]
    bad = ~torch.isfinite(probe_nll).all(1)
    if bool(bad.any()):
        worst = float(x.abs().max())
        raise ValueError(
            f"the log-likelihood of {int(bad.sum())} of {len(bad)} samples is not finite (x reaches |x| = "
            f"{worst:.3g}): the density underflows or the ODE diverged; are the data in the model's range?"
        )
    return LikelihoodResult(nll=probe_nll.mean(1), prior_logp=prior_lp, delta_logp=delta, z=z, nfe=nfe,
                            settings=settings, integration_error=error,
                            probe_nll=probe_nll.T if divergence == "hutchinson" else None)  # fmt: skip


def _checked_fallback(max_seconds: float | None, fallback: str | None, fallback_steps: int) -> dict:
    """`log_likelihood`'s budget and fallback options, checked once."""
    if max_seconds is not None:
        check_positive("max_seconds", max_seconds)
    if fallback is not None:
        check_in_registry("likelihood fallback", fallback, ("ei_fixed",))
    return {"max_seconds": max_seconds, "fallback": fallback,
            "fallback_steps": check_positive_int("fallback_steps", fallback_steps)}  # fmt: skip


def _checked_options(sde, divergence, probe, n_probes, method, rtol, atol, t_min, variable, max_steps, steps,
                     error_control, order, error_estimate, grid) -> dict:  # fmt: skip
    """`log_likelihood`'s solver options, each checked once (a one-line ``ValueError`` naming the bad one)."""
    check_in_registry("divergence", divergence, DIVERGENCES)
    check_in_registry("probe", probe, PROBES)
    check_in_registry("ODE time variable", variable, VARIABLES)
    check_in_registry("likelihood solver (method)", method, SOLVERS)
    check_positive_int("n_probes", n_probes)
    max_steps = None if max_steps is None else check_positive_int("max_steps", max_steps)
    steps = check_positive_int("steps", steps)
    order = check_positive_int("order", order)
    if order > MAX_ORDER:
        raise ValueError(f"order must be at most {MAX_ORDER} (the corrector is one higher), got {order}")
    check_in_registry("error control", error_control, ("per_sample", "batch"), "error_control")
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    if grid is not None:
        grid, t_min = _likelihood_grid(sde, grid, method, t_min)
    t_min = likelihood_t_min(sde, t_min)
    return {"divergence": divergence, "method": method, "t_min": t_min, "steps": steps, "order": order, "rtol": rtol,
            "atol": atol, "max_steps": max_steps, "error_control": error_control, "variable": variable,
            "error_estimate": error_estimate, "grid": grid}  # fmt: skip


def _solve_batches(sde, score, x, options, prior, batch_size, probe, n_probes, generator, progress, shard) -> tuple:
    """The solve of every batch of ``x``: ``(log p_T(z), delta log p, z, integration error or None, per-probe NLL
    [B, P])`` concatenated on the CPU (float64 densities), and the batches finished by the fallback."""
    hutchinson = options["divergence"] == "hutchinson"
    parts = list(x.split(batch_size)) if x.shape[0] else []
    priors, deltas, zs, errors, probe_nlls, fell_back = [], [], [], [], [], []
    offset = 0
    for part in progress_bar(parts, "log-likelihood", progress):
        probes = draw_probes(probe, n_probes, part, generator) if hutchinson else None
        try:
            try:
                z, delta, z_low, delta_low = _solve(sde, score, part, probes, options)
            except SolverBudgetSpent as exc:
                if options["fallback"] is None:
                    raise
                fell_back.append({"rows": [offset, offset + part.shape[0]], "reason": str(exc)})
                z, delta, _, _ = _solve(sde, score, part, probes, _fallback_options(options))
                z_low, delta_low, _, _ = _solve(sde, score, part, probes, _fallback_options(options, halved=True))
        except SolverError as exc:
            raise _cannot_finish(exc, offset, shard) from None
        offset += part.shape[0]
        prior_part = _prior(prior, z, part.shape[0])
        per_probe = -(prior_part + delta.to(torch.float64))  # [P, B]
        priors.append(prior_part.cpu())
        deltas.append(delta.to(torch.float64).mean(0).cpu())
        probe_nlls.append(per_probe.cpu())
        zs.append(z)
        if z_low is not None:
            low = -(_prior(prior, z_low, part.shape[0]) + delta_low.to(torch.float64).mean(0))
            errors.append((low - per_probe.mean(0)).abs().cpu())
        else:  # no estimate for this batch (another batch's fallback has one)
            errors.append(torch.full((part.shape[0],), float("nan"), dtype=torch.float64))
    empty = torch.zeros(0, dtype=torch.float64)
    estimated = options["error_estimate"] or options["method"] in EXPONENTIAL_SOLVERS or bool(fell_back)
    return (
        torch.cat(priors) if priors else empty,
        torch.cat(deltas) if deltas else empty,
        torch.cat(zs).cpu() if zs else x.new_zeros((0,) + x.shape[1:]).cpu(),
        (torch.cat(errors) if errors else empty) if estimated else None,
        torch.cat(probe_nlls, 1).T if probe_nlls else torch.zeros(0, n_probes if hutchinson else 1,
                                                                   dtype=torch.float64),
        fell_back,
    )  # fmt: skip


def _settings(options: dict, probe: str, n_probes: int, custom_prior: bool) -> dict:
    """What a `LikelihoodResult` records of the settings that produced it (those that apply to its method)."""
    method, hutchinson = options["method"], options["divergence"] == "hutchinson"
    exponential = method in EXPONENTIAL_SOLVERS
    fixed = method in FIXED_GRID_METHODS + ("ei_fixed",)
    estimated = options["error_estimate"] or exponential
    return {
        "divergence": options["divergence"],
        "probe": probe if hutchinson else None,
        "n_probes": n_probes if hutchinson else None,
        "method": method,
        "rtol": None if fixed else options["rtol"],
        "atol": None if fixed else options["atol"],
        "t_min": options["t_min"],
        "variable": "log_snr (half: log(alpha/sigma))" if exponential else options["variable"],
        "order": options["order"] if exponential else None,
        "prior": "custom" if custom_prior else "sde",
        "steps": options["steps"] if fixed and options["grid"] is None else None,
        "grid": "custom" if options["grid"] is not None else None,
        "error_control": None if fixed else options["error_control"],
        "error_estimate": _ERROR_ESTIMATES[exponential] if estimated else None,
    }


_ERROR_ESTIMATES = {
    True: "embedded: |nll - nll of an explicit predictor of the corrector's order on the same evaluations|",
    False: f"|nll - nll at {ERROR_ESTIMATE_LOOSENING:g}x looser tolerances (half the steps)|",
}


def _cannot_finish(exc: SolverError, offset: int, shard: Tensor | None) -> SolverError:
    """``exc`` of one batch, in one line for the user: which sample (its index in ``x``), which time, what to try."""
    where = f"t={exc.t:.6g}"
    if exc.sample is not None:
        index = offset + exc.sample
        index = int(shard[index]) if shard is not None else index
        where = f"sample {index}, {where}"
    advice = (
        "check the model (its weights may overflow: scoresde sample refuses such a model too) and that the data are "
        "in its range; for a stiff but sound model, loosen rtol/atol (e.g. 1e-3) or pass a larger max_steps"
    )
    return SolverError(f"the likelihood cannot be computed ({where}): {exc}; {advice}", exc.t, exc.sample)


def _prior(prior: Callable[[Tensor], Tensor], z: Tensor, batch: int) -> Tensor:
    """``prior(z)`` in float64, checked to be one value per sample."""
    value = prior(z).to(torch.float64)
    if tuple(value.shape) != (batch,):
        raise ValueError(
            f"prior_logp must return one log density per sample, shape [{batch}], got {tuple(value.shape)}"
        )
    return value


def _likelihood_grid(sde: SDE, grid, method: str, t_min: float | None) -> tuple[Tensor, float]:
    """A user's fixed grid for ``ei_fixed``: decreasing times from exactly ``T`` to the data end (its ``t_min``)."""
    if method != "ei_fixed":
        raise ValueError(f"grid= is the time grid of method='ei_fixed'; got method={method!r}")
    grid = custom_grid(sde, grid)
    if abs(float(grid[0]) - sde.T) > 1e-12 * max(1.0, sde.T):
        raise ValueError(
            f"a likelihood grid must start at T = {sde.T:g} (the prior's time, where log p_T is evaluated); "
            f"its first time is {float(grid[0]):.6g}"
        )
    grid[0] = sde.T
    if t_min is not None and abs(float(grid[-1]) - t_min) > 1e-12:
        raise ValueError(f"the grid ends at {float(grid[-1]):.6g} but t_min={t_min:g}; drop one of them")
    return grid, float(grid[-1])


def likelihood_t_min(sde: SDE, t_min: float | None) -> float:
    """The data end of a likelihood: ``t_min`` checked to lie in (0, T), default `LIKELIHOOD_T_MIN`."""
    return sde.check_t_min(LIKELIHOOD_T_MIN if t_min is None else t_min)


def _distributed_shard(batch: int) -> Tensor | None:
    """Under torchrun (an initialised process group of several processes): the indices this rank evaluates."""
    rank, world = process_world()
    return None if world == 1 else torch.arange(batch)[rank::world]


def _gather(shard: Tensor, local: tuple[Tensor, ...], nfe: int, batch: int) -> tuple[tuple[Tensor, ...], int]:
    """All-gather every rank's share (CPU tensors, one collective after all solves, so ranks whose adaptive
    solvers took different numbers of steps never wait on each other mid-solve) and restore the data order."""
    import torch.distributed as dist

    shares: list = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (shard, local, nfe))
    out = [None if t is None else torch.zeros((batch,) + t.shape[1:], dtype=t.dtype) for t in local]
    for idx, tensors, _ in shares:
        for target, part in zip(out, tensors):
            if target is not None:
                target[idx] = part
    return tuple(out), sum(share[2] for share in shares)
