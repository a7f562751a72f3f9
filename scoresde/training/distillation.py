r"""Few-step students of a probability-flow ODE: progressive distillation and consistency models.

The teacher is any score function $s(x, t)$ (a trained model, or an oracle's exact score), through Tweedie's
denoiser $D(x, t) = (x + \sigma_t^2 s)/\alpha_t$. In the scaled variables $y = x/\alpha$,
$\tilde\sigma = \sigma/\alpha = e^{-\lambda/2}$ the probability-flow ODE of every SDE is EDM's
$dy/d\tilde\sigma = (y - D)/\tilde\sigma$, so one formulation serves VP, sub-VP and VE.

- **Progressive distillation** (Salimans & Ho 2022): a student with $K$ steps learns two deterministic DDIM steps
  of its teacher (on a grid of $2K$ steps) in one: from $z_t$ the teacher reaches $z_{t''}$ through $t'$, and the
  student's denoiser is fitted to the $\tilde x$ for which one DDIM step from $t$ lands on $z_{t''}$,
  $$\tilde x = \frac{z_{t''} - (\sigma_{t''}/\sigma_t)\,z_t}{\alpha_{t''} - (\sigma_{t''}/\sigma_t)\,\alpha_t},
  \qquad \ell = \max(\mathrm{SNR}_t, 1)\,\overline{\|D_\theta(z_t, t) - \tilde x\|^2}$$
  ("truncated SNR" weighting). Rounds halve $K$; the student samples with ``ddim`` on its grid in $K$ NFE.
- **Consistency models** (Song, Dhariwal, Chen & Sutskever 2023): $f_\theta(x, t)$ maps any point of an ODE
  trajectory to its end at $t_{min} = \epsilon$,
  $$f_\theta(x, t) = \alpha_\epsilon\big(c_{skip}(t)\,y + c_{out}(t)\,F_\theta(c_{in}(t)\,y, t)\big),\quad
  c_{skip} = \frac{\sigma_d^2}{(\tilde\sigma - \tilde\sigma_\epsilon)^2 + \sigma_d^2},\
  c_{out} = \frac{\sigma_d(\tilde\sigma - \tilde\sigma_\epsilon)}{\sqrt{\sigma_d^2 + \tilde\sigma^2}},\
  c_{in} = \frac{1}{\sqrt{\tilde\sigma^2 + \sigma_d^2}},$$
  so $f_\theta(x, \epsilon) = x$ by construction. *Distillation*: on a discretisation
  $\epsilon = t_1 < \dots < t_N = T$, $x_{t_{n+1}} = \alpha x_0 + \sigma z$ and $\hat x_{t_n}$ one teacher ODE step
  (``heun`` or ``ddim``), the loss is $d(f_\theta(x_{t_{n+1}}, t_{n+1}), f_{\theta^-}(\hat x_{t_n}, t_n))$ with
  $\theta^-$ an EMA of $\theta$ (decay ``target_ema``), $d$ squared L2 or pseudo-Huber
  $\sqrt{\|\cdot\|^2 + c^2} - c$. *Training* (no teacher; improved consistency training, Song & Dhariwal 2023):
  $\hat x_{t_n} = \alpha_{t_n}x_0 + \sigma_{t_n}z$ with the same $z$, $\theta^- = \mathrm{sg}(\theta)$, pseudo-Huber,
  weights $1/(\tilde\sigma_{n+1} - \tilde\sigma_n)$, a log-normal draw of $n$ and the doubling curriculum of $N$.
  Multistep consistency sampling: `scoresde.samplers` ``consistency``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._checks import check_in_registry, expand_to, standard_normal_like
from ..config.schema import (  # one list of the methods: the config validates it
    CONSISTENCY_DISTANCES,
    DISTILLATION_METHODS,
    TEACHER_SOLVERS,
)
from ..models.consistency import ConsistencyModel, noise_to_signal
from ..processes.base import SDE
from ..processes.score import ScoreFn
from ..processes.seam import sigma_score, x0_from_sigma_score
from ..samplers.ddim import ddim_update
from ..samplers.heun import heun_update

__all__ = [
    "denoiser",
    "teacher_step",
    "consistency_times",
    "consistency_curriculum",
    "consistency_loss",
    "progressive_grid",
    "progressive_loss",
    "init_from_teacher",
    "DISTILLATION_METHODS",
    "TEACHER_SOLVERS",
    "CONSISTENCY_DISTANCES",
]


def denoiser(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor) -> Tensor:
    r"""Tweedie's $D(x, t) = (x + \sigma_t^2\,s(x, t))/\alpha_t$ (one score evaluation; through ``scaled_score``,
    $\sigma s$, when the model has one, so that no small $\sigma$ is divided by)."""
    return x0_from_sigma_score(sde, x, t, sigma_score(sde, score_fn, x, t))


def teacher_step(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, s: Tensor, solver: str = "heun") -> Tensor:
    r"""One probability-flow ODE step of the teacher from ``t`` to ``s`` (``[B]`` each), the samplers' own steps
    (`scoresde.samplers.ddim.ddim_update`, `scoresde.samplers.heun.heun_update`): ``ddim`` (first order, one evaluation)
    $x_s = \alpha_s D + \sigma_s (x - \alpha_t D)/\sigma_t$, or ``heun`` (EDM's second-order step in
    $(y, \tilde\sigma)$, two evaluations)."""
    check_in_registry("teacher solver", solver, TEACHER_SOLVERS)
    alpha_t, alpha_s = expand_to(sde.alpha(t), x), expand_to(sde.alpha(s), x)
    d_t = denoiser(sde, score_fn, x, t)
    if solver == "ddim":
        return ddim_update(x, d_t, alpha_t, alpha_s, expand_to(sde.sigma(s) / sde.sigma(t), x))
    st, ss = expand_to(noise_to_signal(sde, t), x), expand_to(noise_to_signal(sde, s), x)
    y = x / alpha_t
    slope_s = lambda y_end: (y_end - denoiser(sde, score_fn, alpha_s * y_end, s)) / ss  # noqa: E731
    return alpha_s * heun_update(y, ss - st, (y - d_t) / st, slope_s)


def consistency_times(sde: SDE, n: int, t_min: float, rho: float = 7.0, positions: Tensor | None = None) -> Tensor:
    r"""The discretisation $t_{min} = t_1 < \dots < t_n = T$ (increasing, float64): EDM's $\rho$-spacing of
    $\tilde\sigma$ (Song et al. 2023 use $\rho = 7$), $\tilde\sigma_k^{1/\rho} = \tilde\sigma_{min}^{1/\rho}
    + \frac{k}{n - 1}(\tilde\sigma_{max}^{1/\rho} - \tilde\sigma_{min}^{1/\rho})$; with ``positions`` (real
    ``k`` in ``[0, n - 1]``, any shape) the times at those positions instead of at the integers."""
    if n < 2:
        raise ValueError(f"a consistency discretisation needs at least 2 times, got {n}")
    k = torch.arange(n, dtype=torch.float64) if positions is None else positions.to(torch.float64)
    ends = torch.tensor([t_min, sde.T], dtype=torch.float64)
    s_min, s_max = noise_to_signal(sde, ends) ** (1.0 / rho)
    sigma = (s_min + k / (n - 1) * (s_max - s_min)) ** rho
    t = sde.t_from_log_snr(-2.0 * torch.log(sigma))
    return torch.where(k <= 0, ends[0], torch.where(k >= n - 1, ends[1], t))


def consistency_curriculum(step: int, total: int, s0: int = 10, s1: int = 1280) -> int:
    r"""Improved consistency training's number of times at training ``step`` of ``total``:
    $N = \min(s_0 2^{\lfloor k/K'\rfloor}, s_1) + 1$, $K' = \lfloor K/(\log_2(s_1/s_0) + 1)\rfloor$."""
    stage = max(total // (int(math.log2(s1 / s0)) + 1), 1)
    return min(s0 * 2 ** (step // stage), s1) + 1


def _lognormal_indices(sde: SDE, times: Tensor, batch: int, sigma_data: float, generator) -> Tensor:
    r"""Indices ``n`` of the pairs $(t_n, t_{n+1})$ drawn with $p(n) \propto \mathrm{erf}(\frac{\log\tilde\sigma_{n+1}
    - P_m}{\sqrt2 P_s}) - \mathrm{erf}(\frac{\log\tilde\sigma_n - P_m}{\sqrt2 P_s})$, $P_m = -1.1 + \log(\sigma_d/0.5)$,
    $P_s = 2$ (improved consistency training's log-normal, moved with the data's scale)."""
    log_sigma = torch.log(noise_to_signal(sde, times))
    mean, std = -1.1 + math.log(sigma_data / 0.5), 2.0
    cdf = torch.erf((log_sigma - mean) / (math.sqrt(2) * std))
    p = (cdf[1:] - cdf[:-1]).clamp(min=1e-12)
    return torch.multinomial(p / p.sum(), batch, replacement=True, generator=generator)


def consistency_loss(
    student: ConsistencyModel,
    target: nn.Module,
    sde: SDE,
    x0: Tensor,
    n_times: int,
    *,
    teacher: ScoreFn | None = None,
    solver: str = "heun",
    distance: str = "l2",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Per-sample consistency loss ``[B]`` on the ``n_times``-point discretisation (`consistency_times`, from the
    student's ``t_min``): distillation with ``teacher`` (a score function; pair uniform, weight 1), or consistency
    training without one (pair log-normal, weight $1/(\tilde\sigma_{n+1} - \tilde\sigma_n)$). Each pair sits at a
    random real position ``k, k + 1`` of the discretisation (a uniform offset in ``[0, 1)``, capped at the top pair),
    so the student learns every time in $(t_{min}, T]$ with the steps of an ``n_times`` grid, not only the grid's
    ``n_times`` times: multistep sampling evaluates it between them. ``target`` gives $f_{\theta^-}$ (an EMA copy
    of the student, or the student itself: the target is always evaluated without gradient). ``distance``: ``l2``
    (mean over dimensions) or ``pseudo_huber`` ($c = 0.00054\sqrt d$, scaled by $\sigma_d / 0.5$)."""
    check_in_registry("consistency distance", distance, CONSISTENCY_DISTANCES)
    B, opts = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
    if teacher is None:
        pair = _lognormal_indices(sde, consistency_times(sde, n_times, student.t_min), B, student.sigma_data, generator)
    else:
        pair = torch.randint(0, n_times - 1, (B,), generator=generator)
    position = torch.clamp(pair + torch.rand(B, generator=generator, dtype=torch.float64), max=n_times - 2)
    t_lo = consistency_times(sde, n_times, student.t_min, positions=position).to(**opts)
    t_hi = consistency_times(sde, n_times, student.t_min, positions=position + 1).to(**opts)
    z = standard_normal_like(x0, generator)
    x_hi = sde.perturb(x0, t_hi, z)
    with torch.no_grad():
        x_lo = sde.perturb(x0, t_lo, z) if teacher is None else teacher_step(sde, teacher, x_hi, t_hi, t_lo, solver)
        aim = target(x_lo, t_lo)
    diff = (student(x_hi, t_hi) - aim).reshape(B, -1)
    if distance == "l2":
        value = diff.pow(2).mean(1)
    else:
        c = 0.00054 * math.sqrt(diff.shape[1]) * student.sigma_data / 0.5
        value = torch.sqrt(diff.pow(2).sum(1) + c**2) - c
    if teacher is None:
        value = value / (noise_to_signal(sde, t_hi) - noise_to_signal(sde, t_lo))
    return value


def progressive_grid(sde: SDE, student_steps: int, t_min: float | None = None) -> Tensor:
    r"""The teacher's grid of ``2 K`` steps (decreasing, float64), uniform in the log-SNR so that its even points are
    the student's ``K``-step grid (`scoresde.samplers.time_grid` ``log_snr``)."""
    from ..processes.grids import time_grid

    return time_grid(sde, 2 * student_steps, "log_snr", t_min)


def progressive_loss(
    student: nn.Module,
    teacher: ScoreFn,
    sde: SDE,
    x0: Tensor,
    grid: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Per-sample progressive-distillation loss ``[B]`` (module docstring) on the teacher's ``grid`` of ``2K`` steps
    (`progressive_grid`): a student step ``grid[2i] -> grid[2i + 2]`` against two teacher DDIM steps."""
    B, opts = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
    grid = grid.to(**opts)
    k = (len(grid) - 1) // 2
    i = torch.randint(0, k, (B,), generator=generator).to(x0.device)
    t, t_mid, t_end = grid[2 * i], grid[2 * i + 1], grid[2 * i + 2]
    z_t = sde.perturb(x0, t, standard_normal_like(x0, generator))
    with torch.no_grad():
        z_end = teacher_step(sde, teacher, teacher_step(sde, teacher, z_t, t, t_mid, "ddim"), t_mid, t_end, "ddim")
        ratio = sde.sigma(t_end) / sde.sigma(t)
        x_target = (z_end - expand_to(ratio, z_t) * z_t) / expand_to(sde.alpha(t_end) - ratio * sde.alpha(t), z_t)
    x_hat = denoiser(sde, student, z_t, t)
    snr = (sde.alpha(t) / sde.sigma(t)) ** 2
    return torch.clamp(snr, min=1.0) * (x_hat - x_target).reshape(B, -1).pow(2).mean(1)


def init_from_teacher(student: nn.Module, teacher: ScoreFn) -> None:
    """Progressive distillation starts each student at its teacher's weights (when the teacher is a network of the
    same shape; a fresh student for an oracle)."""
    if not isinstance(teacher, nn.Module):
        return
    mine, theirs = student.state_dict(), teacher.state_dict()
    if mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape for k in mine):
        student.load_state_dict(theirs)
