r"""The likelihood's augmented probability-flow ODE solved by an exponential-integrator multistep method in the
log-SNR, with a quadrature of matching order for the divergence on the same nodes (DPM-Solver's change of
variables, Lu et al. 2022, applied to the state *and* its log-density).

With $\lambda = \log(\alpha/\sigma)$ (half the SDE's ``log_snr``) and $\epsilon = -\sigma s_\theta$, the PF-ODE
of any SDE with marginals $x_t = \alpha x_0 + \sigma\epsilon$ is, for $y = x/\alpha$,

$$\frac{dy}{d\lambda} = -e^{-\lambda}\epsilon(x, \lambda),$$

its linear part solved exactly; and the change of log-density from the data end $\lambda_0 = \lambda(t_{min})$
to the prior end $\lambda_N = \lambda(T)$ is, with the divergence taken in $y$ ($\nabla_y\cdot\epsilon =
\alpha\nabla_x\cdot\epsilon$),

$$\int_{t_{min}}^T \nabla\!\cdot v\,dt = D\log\frac{\alpha(T)}{\alpha(t_{min})}
+ \int_{\lambda_0}^{\lambda_N} -e^{-\lambda}\,\alpha\nabla_x\!\cdot\epsilon\;d\lambda .$$

Both integrals have the same closed-form weight $-e^{-\lambda}$ times a model output (weighting
$\nabla_x\cdot\epsilon$ by $-\sigma(\lambda)$ instead, VP needed up to 1.6x the NFE on the oracle). Each step
interpolates the outputs at the last nodes by a polynomial in $\lambda$ and integrates weight times polynomial
exactly (Gauss–Legendre on the closed-form weight: no network evaluation): an Adams–Bashforth predictor of
order ``k``, one evaluation at the predicted point, and an Adams–Moulton-type corrector of order ``k + 1``
through the new node (as UniPC, Zhao et al. 2023: the corrector costs no extra evaluation). The same
weights on the divergences give the log-density quadrature, so state and density are integrated at the
same order on the same nodes.

The predictor and corrector are an embedded pair: their difference, the local error of the predictor, drives
the step size in adaptive mode. The error estimate reported with every likelihood comes from a third
combination of the same evaluations: an explicit predictor of the corrector's order (same order, another
error constant), accumulated over the steps as an embedded solution.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import Tensor

from ..processes.base import SDE
from ..processes.quadrature import lagrange_integrals

__all__ = [
    "ExponentialSolution",
    "SolverError",
    "solve_exponential",
    "step_budget",
    "check_output",
    "lagrange_integrals",
    "per_sample_norm",
    "batch_norm",
]

MAX_ORDER = 4
"""Highest predictor order (the corrector is one higher). Measured on the oracle: order 3 is the best at
the likelihood's accuracies; higher orders extrapolate sharp posterior transitions badly at coarse steps."""


@dataclass
class ExponentialSolution:
    """``z = x(T)`` and ``delta`` $= \\int \\nabla\\cdot v\\,dt$ of the corrected solution, the same of the
    embedded explicit one (``z_low``, ``delta_low``: the error estimate), the accepted and the rejected steps."""

    z: Tensor
    delta: Tensor
    z_low: Tensor
    delta_low: Tensor
    steps: int
    rejected: int


class _Schedule:
    r"""$t(\lambda)$, $\alpha(t)$, $\sigma(t)$ as float64 closed forms on the host (no network calls)."""

    def __init__(self, sde: SDE, t_min: float) -> None:
        self.sde, self.t_min = sde, t_min
        ends = torch.tensor([t_min, sde.T], dtype=torch.float64)
        self.lam0, self.lamN = (0.5 * sde.log_snr(ends)).tolist()

    def time(self, lam: float) -> float:
        if lam == self.lam0:
            return self.t_min
        if lam == self.lamN:
            return self.sde.T
        t = self.sde.t_from_log_snr(torch.tensor(2.0 * lam, dtype=torch.float64))
        return float(t.clamp(self.t_min, self.sde.T))

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        tt = torch.tensor(t, dtype=torch.float64)
        return float(self.sde.alpha(tt)), float(self.sde.sigma(tt))


class SolverError(RuntimeError):
    """A likelihood's ODE solve that cannot finish, raised as soon as that is known: the model's output is not
    finite (``sample`` is the index of the first such sample in the batch), the adaptive step size collapsed, or
    the step budget ran out. ``t`` is the time reached."""

    def __init__(self, message: str, t: float, sample: int | None = None) -> None:
        super().__init__(message)
        self.t, self.sample = t, sample


SOUND_OUTPUT = 1e6
r"""A model whose $|\sigma s|$ (its predicted noise) exceeds this where the step size collapses is overflowing, not
stiff: a trained model's is of order 1, so no fixed-step fallback is tried (`SolverBudgetSpent`)."""


class SolverBudgetSpent(SolverError):
    """An adaptive solve that could not meet its tolerance within its budget (steps, or seconds) or whose step size
    collapsed: the model's flow is stiff there (an undertrained model's is) but finite, so a fixed-step method can
    still finish it (`scoresde.likelihood.log_likelihood`'s ``fallback``)."""


STEP_BUDGET_FACTOR = 30.0
r"""`step_budget`'s multiple of $\Delta\lambda \cdot tol^{-1/(k+1)}$. Measured: a trained toy model takes
$1.4$–$1.5\,\Delta\lambda\, tol^{-1/4}$ steps at order 3 (300 steps at 1e-5, 853 at 1e-7), so the budget is
about 20 times what a smooth solve needs."""

MIN_STEP_FRACTION = 1e-9
"""An adaptive step below this fraction of the log-SNR span cannot make progress in floating point: the solve
has collapsed (a stiff or broken field) and is given up at once."""


def step_budget(span: float, rtol: float, atol: float, order: int) -> int:
    r"""The default bound on an adaptive solve's steps, proportionate to the problem: a method of order ``order``
    (its error estimate of order ``order + 1``) over a log-SNR span $\Delta\lambda$ takes about
    $c\,\Delta\lambda\,tol^{-1/(k+1)}$ steps; the budget is `STEP_BUDGET_FACTOR` of that, at least 1,000."""
    tol = min(rtol, atol)
    return max(1000, math.ceil(STEP_BUDGET_FACTOR * abs(span) * tol ** (-1.0 / (order + 1))))


def check_output(value: Tensor, t: float, what: str = "score") -> None:
    """Raise `SolverError` naming the first sample and the time where the model's output ``value`` ``[B, ...]``
    holds a NaN or an infinity (weights that overflow, data outside the model's range)."""
    bad = ~torch.isfinite(value.reshape(value.shape[0], -1)).all(1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise SolverError(
            f"the model's {what} is not finite at t={t:.6g} for {int(bad.sum())} of {len(bad)} samples", t, first
        )


def _size(eps: Tensor) -> str:
    """How large the model's last output was, for a give-up message (a trained model's eps is of order 1)."""
    largest = float(eps.abs().max())
    return f"the model's last output reaches |sigma * score| = {largest:.3g}; a trained model's is of order 1"


def _weight(lam: np.ndarray) -> np.ndarray:
    """$-e^{-\\lambda}$: the closed-form weight of both integrals."""
    return -np.exp(-lam)


def _combine(weights: list[float], values: list[Tensor]) -> Tensor:
    """$\\sum_j w_j v_j$ over the newest values first (``values[-1]`` takes ``weights[0]``)."""
    return sum(w * values[-1 - j] for j, w in enumerate(weights))


def solve_exponential(
    sde: SDE,
    score_fn: Callable[[Tensor, Tensor], Tensor],
    divergence: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    t_min: float,
    *,
    order: int = 3,
    lams: list[float] | None = None,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    error_norm: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_steps: int | None = None,
    first_step: float = 0.02,
    deadline: float | None = None,
) -> ExponentialSolution:
    r"""Integrate ``(x, log-density)`` from the data end ``t_min`` to ``T`` (see the module docstring).

    ``lams`` (decreasing from $\lambda(t_{min})$ to $\lambda(T)$) gives a fixed grid; without it the step
    size is adaptive: a step is accepted when ``error_norm(dx, dlogp) <= 1``, with ``dx`` the corrector–predictor
    difference of the state scaled by ``atol + rtol |x|`` and ``dlogp`` that of the log-density over ``atol``
    (default `per_sample_norm`: the worst sample's).
    ``first_step`` is the first step in $\lambda$ (the order ramps up from 1 with the history). A solve that cannot
    finish raises `SolverError` as soon as that is known: a model output that is not finite (checked at every
    evaluation), a step below `MIN_STEP_FRACTION` of the span, more than ``max_steps`` steps (default
    `step_budget`) or a ``time.monotonic()`` past ``deadline`` (the last three: `SolverBudgetSpent`)."""
    schedule = _Schedule(sde, t_min)
    dim = x[0].numel()
    error_norm = per_sample_norm if error_norm is None else error_norm

    evaluate = partial(_evaluate, score_fn, divergence)

    lam = schedule.lam0
    t = t_min
    alpha, sigma = schedule.alpha_sigma(t)
    eps, div_eps = evaluate(x, t, alpha, sigma)
    nodes, outputs, divs = [lam], [eps], [div_eps]
    state = x
    integral = torch.zeros((), dtype=x.dtype, device=x.device)  # broadcasts to the divergences' [P, B]
    drift_low = torch.zeros_like(x)  # y_low - y_high, accumulated
    integral_low = torch.zeros_like(integral)
    adaptive = lams is None
    h = -abs(first_step) if adaptive else None
    accepted, rejected, worst = 0, 0, None
    span = abs(schedule.lamN - schedule.lam0)
    if max_steps is None:
        max_steps = step_budget(span, rtol, atol, order)
    while lam > schedule.lamN:
        if adaptive:
            _check_progress(accepted + rejected, max_steps, h, span, t, worst, outputs[-1], deadline)
            lam_next = lam + h
            if lam_next - schedule.lamN < 0.1 * abs(h):  # end exactly at T, leaving no sliver before it
                lam_next = schedule.lamN
        else:
            lam_next = lams[accepted + 1]
        k = min(order, len(nodes))
        past = nodes[-k:][::-1]
        w_pred = lagrange_integrals(past, lam, lam_next, _weight)
        y = state / alpha
        y_pred = y + _combine(w_pred, outputs)
        int_pred = _combine(w_pred, divs)
        t_next = schedule.time(lam_next)
        alpha_next, sigma_next = schedule.alpha_sigma(t_next)
        eps_new, div_new = evaluate(alpha_next * y_pred, t_next, alpha_next, sigma_next)
        w_corr = lagrange_integrals([lam_next] + past, lam, lam_next, _weight)
        y_corr = y + _combine(w_corr, outputs + [eps_new])
        int_corr = _combine(w_corr, divs + [div_new])
        x_next = alpha_next * y_corr
        if adaptive:
            dx = alpha_next * (y_corr - y_pred) / (atol + rtol * torch.maximum(x_next.abs(), state.abs()))
            err, worst = _step_error(error_norm, dx, (int_corr - int_pred) / atol, t_next)
            factor = 0.9 * (max(err, 1e-10) ** (-1.0 / (k + 1)))
            if err > 1.0:
                rejected += 1
                h = h * max(0.2, min(factor, 0.9))
                continue
            h = (lam_next - lam) * min(2.0, max(0.2, factor))
        y_check, int_check = _embedded(nodes, outputs, divs, k, lam, lam_next, y, (y_pred, int_pred))
        drift_low = drift_low + (y_check - y_corr)
        integral_low = integral_low + int_check
        integral = integral + int_corr
        state, lam, t, alpha = x_next, lam_next, t_next, alpha_next
        nodes.append(lam)
        outputs.append(eps_new)
        divs.append(div_new)
        if len(nodes) > MAX_ORDER + 2:
            del nodes[0], outputs[0], divs[0]
        accepted += 1
    log_alpha_ratio = math.log(alpha) - math.log(schedule.alpha_sigma(t_min)[0])
    delta = integral + dim * log_alpha_ratio
    z_low = state + alpha * drift_low
    return ExponentialSolution(
        z=state,
        delta=delta,
        z_low=z_low,
        delta_low=integral_low + dim * log_alpha_ratio,
        steps=accepted,
        rejected=rejected,
    )


def _evaluate(score_fn, divergence, state: Tensor, t: float, alpha: float, sigma: float) -> tuple[Tensor, Tensor]:
    r"""$\epsilon = -\sigma s$ and its divergence in $y = x/\alpha$, $\alpha\nabla_x\cdot\epsilon$ (``[P, B]``), at
    ``state`` (every output checked finite)."""
    B = state.shape[0]
    with torch.enable_grad():
        y = state.detach().requires_grad_(True)
        score = score_fn(y, torch.full((B,), t, dtype=state.dtype, device=state.device))
        check_output(score, t)
        div = divergence(score, y)
    check_output(div.reshape(-1, B).T, t, "divergence")
    return -sigma * score.detach(), -alpha * sigma * div.detach()


def _step_error(error_norm, dx: Tensor, dlogp: Tensor, t_next: float) -> tuple[float, int]:
    """The step's error norm and the sample it is worst for (the one a give-up names); a non-finite estimate (finite
    outputs whose differences overflow: no step size helps) is a `SolverError`."""
    err = float(error_norm(dx, dlogp))
    worst = int(dx.reshape(dx.shape[0], -1).pow(2).mean(1).argmax())
    if not math.isfinite(err):
        raise SolverError(f"the solver's error estimate is not finite at t={t_next:.6g}", t_next)
    return err, worst


def _check_progress(
    taken: int, max_steps: int, h: float, span: float, t: float, worst, output: Tensor, deadline: float | None = None
) -> None:
    """A `SolverBudgetSpent` naming the time (and the worst sample) when the adaptive solve has spent its step or
    time budget or its step size has collapsed."""
    if deadline is not None and time.monotonic() > deadline:
        raise SolverBudgetSpent(
            f"the exponential-integrator solver ran out of time after {taken} steps at t={t:.6g}", t, worst
        )
    if taken >= max_steps:
        raise SolverBudgetSpent(
            f"the exponential-integrator solver spent its {max_steps} steps and reached t={t:.6g} ({_size(output)})",
            t,
            worst,
        )
    if abs(h) < MIN_STEP_FRACTION * span:
        error = SolverBudgetSpent if float(output.abs().max()) < SOUND_OUTPUT else SolverError
        raise error(
            f"the exponential-integrator solver's step size collapsed to {abs(h):.3g} in log-SNR at t={t:.6g} "
            f"({_size(output)})",
            t,
            worst,
        )


def _embedded(nodes: list, outputs: list, divs: list, k: int, lam: float, lam_next: float, y: Tensor,
              predicted: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:  # fmt: skip
    """The embedded solution of a step: an explicit predictor of the corrector's order on the same evaluations
    (same order, different error constant: their difference measures the corrector's own error); in the warm-up,
    with no history for it yet, the lower-order ``predicted`` (state, integral) stands in."""
    if len(nodes) <= k:
        return predicted
    w_check = lagrange_integrals(nodes[-(k + 1) :][::-1], lam, lam_next, _weight)
    return y + _combine(w_check, outputs), _combine(w_check, divs)


def per_sample_norm(dx: Tensor, dlogp: Tensor) -> Tensor:
    """The worst sample's RMS over its state, or its log-density error."""
    per_sample = dx.reshape(dx.shape[0], -1).pow(2).mean(1).sqrt()
    return torch.maximum(per_sample.max(), dlogp.abs().max())


def batch_norm(dx: Tensor, dlogp: Tensor) -> Tensor:
    """One RMS over the whole batch's states and log-densities (torchdiffeq's default norm)."""
    n = dx.numel() + dlogp.numel()
    return ((dx.pow(2).sum() + dlogp.pow(2).sum()) / n).sqrt()
