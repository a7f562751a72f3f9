r"""A multistep solver whose coefficients and times are fitted to a model: five NFE without a student network.

The solver is DPM-Solver++ ``order``M (data prediction, in $\lambda = \log(\alpha/\sigma)$) plus a correction at
every step $i$ (`scoresde.samplers.dpm_solver.fitted_steps`):

$$x_{i+1} = \mathrm{DPM}^{++}_i(x_i) + \alpha_{i+1}(1 - e^{-h_i})\sum_{j=1}^{\min(i, m)} c_{ij}\,
\big(\hat x_0^{(i-j)} - \hat x_0^{(i)}\big).$$

The corrections act on differences of data predictions, so any $c$ keeps the first-order consistency condition
(a constant $\hat x_0$ is integrated exactly; the base's order is what $c = 0$ gives), and $c = 0$ is the base
solver bit for bit. The ``K - 1`` interior times are parameterised as `scoresde.samplers.grid_fit` does (softmax
shares of the log-SNR interval, so every parameter vector is a valid grid). Times and corrections, ``K - 1 + K m``
numbers, are fitted jointly by Adam, differentiating through the solver and the model (as LD3, Tong et al. 2025,
fits times and S4S, Frankel et al. 2025, fits coefficients and times), to the objective on ``n`` calibration draws
of the prior (their own generator: evaluate on fresh draws):

- ``"trajectory"``: $\frac1n\sum\|S_K(x_T) - \Phi(x_T)\|^2$, the end point of a tight solve $\Phi$ of the same
  model (DPM-Solver++ 3M, 256 log-SNR steps: `scoresde.samplers.grid_fit.REFERENCE`);
- ``"distribution"``: the sliced energy distance of $S_K(x_T)$ to the tight solve's samples (a distributional
  target: the few-step samples may land on other points of the same distribution);
- ``"mix"``: their sum, the energy distance scaled to the trajectory error at the start.

The fit keeps the best parameters seen on the whole calibration set, never worse than its start (the base solver
on the start grid). `FittedSolver` is the artefact: saved as JSON in the run with what it belongs to
(`scoresde.processes.artefacts`), loaded by `FittedSolver.load`, sampled by ``sample(..., solver=fit)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial

import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive, check_positive_int, progress_bar
from .._stats import sliced_energy
from ..processes.artefacts import belongs_to
from ..processes.base import SDE
from ..processes.grids import custom_grid, time_grid
from ..processes.score import ScoreFn
from ..processes.seam import as_score, x0_from_score
from .dpm_solver import fitted_steps
from .fitted_solver import FittedSolver
from .grid_fit import REFERENCE, GridFit, fit_grid
from .sampling import sample

__all__ = ["FittedSolver", "fit_solver", "OBJECTIVES"]

OBJECTIVES = ("trajectory", "distribution", "mix")
"""What `fit_solver` minimises (module docstring)."""


def _shares_from(grid: Tensor, sde: SDE) -> Tensor:
    """The log-shares of the log-SNR interval that each step of ``grid`` covers (the fit's time parameters)."""
    lam = sde.log_snr(grid.to(torch.float64))
    return torch.log(torch.clamp(lam.diff() / (lam[-1] - lam[0]), min=1e-12))


def _grid_from(theta: Tensor, sde: SDE, t_min: float) -> Tensor:
    """The grid whose steps cover the softmax(theta) shares of the log-SNR interval (differentiable in theta)."""
    ends = sde.log_snr(torch.tensor([sde.T, t_min], dtype=torch.float64))
    share = torch.softmax(theta, 0)
    lam = ends[0] + (ends[1] - ends[0]) * torch.cumsum(share, 0)[:-1]
    inner = sde.t_from_log_snr(lam)
    return torch.cat([torch.tensor([sde.T], dtype=torch.float64), inner, torch.tensor([t_min], dtype=torch.float64)])


def _solve(sde: SDE, score: ScoreFn, x_T: Tensor, grid: Tensor, corrections, order: int) -> Tensor:
    """The fitted solver from ``x_T`` on ``grid`` (float64, possibly requiring grad), differentiable throughout."""
    lam_t = 0.5 * sde.log_snr(grid)
    alphas_t, sigmas_t = sde.alpha(grid), sde.sigma(grid)
    lam, alphas, sigmas = list(lam_t.to(x_T.dtype)), list(alphas_t.to(x_T.dtype)), list(sigmas_t.to(x_T.dtype))
    times = grid.to(x_T.dtype)

    def x0_fn(x: Tensor, i: int) -> Tensor:
        t = times[i].expand(x.shape[0])
        return x0_from_score(sde, x, t, score(x, t))

    return fitted_steps(x_T, x0_fn, lam, alphas, sigmas, corrections, order)


def _checked(steps, order, history, iterations, n, lr, objective, batch_size) -> tuple:
    """`fit_solver`'s settings, each checked in one line: ``(steps, order, history, iterations, n, lr,
    batch_size)``."""
    steps = check_positive_int("steps", steps)
    order = check_positive_int("order", order)
    check_in_registry("fitted order", str(order), ["1", "2", "3"])
    if steps < order:
        raise ValueError(f"a {steps}-step solver cannot reach its base's order {order}; steps must be >= {order}")
    n = check_positive_int("n", n)
    check_in_registry("objective", objective, OBJECTIVES)
    batch_size = n if batch_size is None else min(check_positive_int("batch_size", batch_size), n)
    history, iterations = check_positive_int("history", history), check_positive_int("iterations", iterations)
    return steps, order, history, iterations, n, check_positive("lr", lr), batch_size


def _energy_scale(x: Tensor, reference: Tensor) -> float:
    """The ``mix`` objective's weight: the trajectory error over the sliced energy distance, at the start."""
    energy = float(sliced_energy(x, reference, 64))
    return float((x - reference).pow(2).sum(1).mean()) / max(energy, 1e-12)


def _start_grid(sde: SDE, steps: int, t_min: float, grid_fit: Callable[[], GridFit], item) -> Tensor:
    """A start's grid: the base's grid fitted on the calibration draws (``"fit_grid"``: ``grid_fit()``), a named
    grid, or times (checked to have ``steps`` steps ending at ``t_min``)."""
    if isinstance(item, str) and item == "fit_grid":
        return grid_fit().times
    if isinstance(item, str):
        return time_grid(sde, steps, item, t_min)
    grid = custom_grid(sde, item)
    if len(grid) != steps + 1 or abs(float(grid[-1]) - t_min) > 1e-9 * max(1.0, t_min):
        raise ValueError(
            f"a start grid must have {steps} steps ending at t_min = {t_min:g}; got {len(grid) - 1} steps ending "
            f"at {float(grid[-1]):g}"
        )
    return grid


def _fit_loss(objective: str, scale: list[float], x: Tensor, target: Tensor) -> Tensor:
    """The fit's objective between solved ``x`` and the reference ``target``: the trajectory error (mean squared
    distance), the sliced energy distance times ``scale[0]`` (``distribution``), or their sum (``mix``)."""
    trajectory = (x - target).reshape(len(x), -1).pow(2).sum(1).mean().to(torch.float64)
    if objective == "trajectory":
        return trajectory
    energy = sliced_energy(x.reshape(len(x), -1), target.reshape(len(target), -1), 64)
    return energy * scale[0] if objective == "distribution" else trajectory + energy * scale[0]


def fit_solver(
    sde: SDE,
    score_fn: ScoreFn,
    steps: int,
    shape: Sequence[int],
    *,
    order: int = 3,
    history: int = 3,
    n: int = 1024,
    iterations: int = 300,
    lr: float = 0.02,
    objective: str = "trajectory",
    batch_size: int | None = None,
    t_min: float | None = None,
    start: str | Sequence = ("fit_grid", "log_snr_warped"),
    fit_times: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> FittedSolver:
    r"""Fit the ``steps``-step solver (module docstring) to ``score_fn`` on ``n`` calibration draws of shape
    ``shape[1:]``: DPM-Solver++ ``order``M with ``history`` corrections a step (differences to the last ``history``
    data predictions), its times too unless ``fit_times=False``, by ``iterations`` Adam steps of rate ``lr`` on
    ``objective`` (`OBJECTIVES`) over minibatches of ``batch_size`` draws (default all), from each ``start`` grid in
    turn, the best end kept: ``"fit_grid"`` (the base's grid fitted by `scoresde.samplers.fit_grid` first,
    ``iterations`` Nelder-Mead evaluations), a name of `scoresde.processes.grids.GRIDS`, or times. The default
    starts from both the fitted and the warped log-SNR grid: the times have local optima, and each start lost to the
    other somewhere (the checkerboard, VE, 5 NFE: 1.29x the floor from the warped grid, 0.82x from the fitted one;
    gmm, VP, 3 NFE: 4.5x from the warped grid, 30x from the fitted one). Returns the best
    `FittedSolver` on the whole calibration set, never worse than the base on the best start; sample it with
    ``sample(sde, score_fn, shape, fit.recipe())``."""
    steps, order, history, iterations, n, lr, batch_size = _checked(steps, order, history, iterations, n, lr,
                                                                    objective, batch_size)  # fmt: skip
    t_min = sde.check_t_min(t_min)
    score = as_score(sde, score_fn, "fit_solver")
    began = time.perf_counter()
    generator = generator or torch.Generator().manual_seed(0)
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    x_T = sde.prior_sampling((n, *shape[1:]), generator, dtype=dtype)
    with torch.no_grad():
        reference = sample(sde, score, x_T.shape, x_T=x_T, t_min=t_min, denoise=False, dtype=dtype, **REFERENCE).x

    grid_fit = partial(fit_grid, sde, score, "dpm_solver", steps, shape, order=order, n=n, t_min=t_min, dtype=dtype,
                       iterations=iterations, generator=torch.Generator().manual_seed(seed))  # fmt: skip
    grid_of = partial(_start_grid, sde, steps, t_min, grid_fit)
    scale = [1.0]
    loss_of = partial(_fit_loss, objective, scale)

    def full_loss(theta: Tensor, corrections: Tensor) -> float:
        with torch.no_grad():
            grid = _grid_from(theta, sde, t_min)
            parts = [_solve(sde, score, xb, grid, corrections.to(dtype), order) for xb in x_T.split(batch_size)]
            return float(loss_of(torch.cat(parts), reference))

    def descend(start_grid: Tensor) -> tuple[float, tuple]:
        """Adam from ``start_grid`` and zero corrections: the start's error and the best (error, theta, c) seen."""
        theta = _shares_from(start_grid, sde).requires_grad_(fit_times)
        corrections = torch.zeros(steps, history, dtype=torch.float64, requires_grad=True)
        if objective == "mix":  # the energy distance weighted to the trajectory error's size at the start
            with torch.no_grad():
                x = _solve(sde, score, x_T, _grid_from(theta, sde, t_min), corrections.to(dtype), order)
                scale[0] = _energy_scale(x.reshape(n, -1), reference.reshape(n, -1))
        start_error = full_loss(theta, corrections)
        best = (start_error, theta.detach().clone(), corrections.detach().clone())
        optimiser = torch.optim.Adam([corrections, theta] if fit_times else [corrections], lr=lr)
        batches = torch.Generator().manual_seed(seed + 1)
        check_every = max(1, iterations // 30)
        for it in progress_bar(range(iterations), "fit-solver", progress):
            index = torch.randperm(n, generator=batches)[:batch_size]
            optimiser.zero_grad()
            grid = _grid_from(theta, sde, t_min)
            loss = loss_of(_solve(sde, score, x_T[index], grid, corrections.to(dtype), order), reference[index])
            if not torch.isfinite(loss):
                break  # a step too far: keep the best so far
            loss.backward()
            optimiser.step()
            if (it + 1) % check_every == 0 or it + 1 == iterations:
                error = full_loss(theta, corrections)
                if error < best[0]:
                    best = (error, theta.detach().clone(), corrections.detach().clone())
        return start_error, best

    starts = [start] if isinstance(start, str) or isinstance(start, Tensor) else list(start)
    if starts and not all(isinstance(item, (str, Tensor)) for item in starts):  # one sequence of times
        starts = [start]
    # each descent ends no worse than its start; the best end wins (a local optimum of the times from one start was
    # 37x worse than from another at 3 NFE): min keeps the first of equal ends
    ends = [descend(grid_of(item)) for item in starts]
    start_error = min(error0 for error0, _ in ends)
    error, theta_best, corrections_best = min((found for _, found in ends), key=lambda found: found[0])
    settings = {"base": f"dpm_solver++ {order}M", "steps": steps, "history": history, "objective": objective, "n": n,
                "iterations": iterations, "lr": lr, "fit_times": fit_times, "t_min": t_min, "reference": REFERENCE,
                "start": [item if isinstance(item, str) else "custom" for item in starts],
                "seconds": time.perf_counter() - began,  # the reference solve, the grid fits and every descent
                "belongs_to": belongs_to(sde, score_fn)}  # fmt: skip
    times = _grid_from(theta_best, sde, t_min).detach()
    return FittedSolver(times, order, corrections_best.tolist(), start_error, error, settings)
