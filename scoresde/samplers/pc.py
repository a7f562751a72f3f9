r"""Predictor–corrector sampling (Song et al. 2021, Section 4.2 and Algorithms 2–5).

A *predictor* takes one reverse-time step ``t -> t_next`` of a numerical solver of the reverse SDE (or of
the probability-flow ODE), given as the `ReverseSDE` the run builds once; a *corrector* then runs ``n_steps``
of score-based MCMC (Langevin dynamics) targeting $p_{t_{next}}$. Both return ``(x, x_mean)``: the new state
and its noise-free part. Neither validates anything: `scoresde.sample` did, once.

Symbols: ``t`` current time ``[B]``, ``t_next < t`` the next one, ``score`` $s_\theta(x, t)$,
$\alpha_{t|s} = \alpha(t)/\alpha(s)$ and $\sigma_{t|s}^2 = \sigma(t)^2 - \alpha_{t|s}^2\sigma(s)^2$
the coefficients of the exact forward transition from ``s`` to ``t``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import (
    check_in_registry,
    check_positive,
    check_positive_int,
    expand_to,
    registering,
    standard_normal_like,
)
from ..processes.base import SDE
from ..processes.reverse import ReverseSDE
from ..processes.score import ScoreFn
from .base import Sampling, register_sampler

__all__ = [
    "register_predictor",
    "register_corrector",
    "predictors",
    "correctors",
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral_sampling",
    "langevin",
    "annealed_langevin",
    "pc_sampler",
]

Predictor = Callable[..., tuple[Tensor, Tensor]]
Corrector = Callable[..., tuple[Tensor, Tensor]]
_PREDICTORS: dict[str, Predictor] = {}
_CORRECTORS: dict[str, Corrector] = {}


def _registrar(table: dict, kind: str):
    def register(name: str):
        return registering(kind, table, name)

    return register


register_predictor = _registrar(_PREDICTORS, "predictor")
register_predictor.__doc__ = (
    """Decorator registering ``fn(reverse: ReverseSDE, x, t, t_next, *, generator) -> (x, x_mean)``."""
)
register_corrector = _registrar(_CORRECTORS, "corrector")
register_corrector.__doc__ = (
    """Decorator registering ``fn(sde, score_fn, x, t, *, snr, n_steps, generator) -> (x, x_mean)``."""
)


def predictors() -> list[str]:
    """Names of the registered predictors."""
    return sorted(_PREDICTORS)


def correctors() -> list[str]:
    """Names of the registered correctors."""
    return sorted(_CORRECTORS)


_NO_ANCESTRAL_FLOW = (
    "predictor 'ancestral_sampling' has no probability-flow form; use 'reverse_diffusion' or 'euler_maruyama'"
)


# ---------------------------------------------------------------------- predictors
@register_predictor("euler_maruyama")
def euler_maruyama(reverse: ReverseSDE, x: Tensor, t: Tensor, t_next: Tensor, *, generator=None):
    r"""Reverse Euler–Maruyama (Song et al. 2021, Eq. 6) with $\Delta t = t_{next} - t < 0$:
    $x' = x + [f(t)x - g^2 s]\Delta t + g\sqrt{|\Delta t|}\,z$ (no noise, and $\tfrac12 g^2 s$, for the ODE)."""
    dt = expand_to(t_next - t, x)
    x_mean = x + reverse.drift(x, t) * dt
    return x_mean + expand_to(reverse.diffusion(t), x) * torch.sqrt(-dt) * standard_normal_like(x, generator), x_mean


@register_predictor("reverse_diffusion")
def reverse_diffusion(reverse: ReverseSDE, x: Tensor, t: Tensor, t_next: Tensor, *, generator=None):
    r"""Reverse diffusion (Song et al. 2021, Eq. 47): the forward discrete step ``(f, G)`` from ``t_next`` to
    ``t`` run backwards, $x' = x - f + G^2 s + G z$."""
    rev_f, rev_G = reverse.step(x, t, t - t_next)
    x_mean = x - rev_f
    return x_mean + expand_to(rev_G, x) * standard_normal_like(x, generator), x_mean


@register_predictor("ancestral_sampling")
def ancestral_sampling(reverse: ReverseSDE, x: Tensor, t: Tensor, t_next: Tensor, *, generator=None):
    r"""Ancestral sampling: draw from the exact Gaussian posterior $q(x_s | x_t, \hat x_0)$, ``s = t_next``,

    $$x_s = \frac{x_t + \sigma_{t|s}^2\, s_\theta(x_t, t)}{\alpha_{t|s}}
    + \frac{\sigma_{t|s}\,\sigma(s)}{\sigma(t)}\, z .$$

    For VP this is DDPM's step $(x + \beta_i s)/\sqrt{1-\beta_i}$ with the posterior variance
    $\tilde\beta_i$; for VE, SMLD's $x + (\sigma_i^2 - \sigma_{i-1}^2)s$ with variance
    $\sigma_{i-1}^2(\sigma_i^2 - \sigma_{i-1}^2)/\sigma_i^2$ (Song et al. 2021, Eqs. 45–46).
    """
    if reverse.probability_flow:
        raise ValueError(_NO_ANCESTRAL_FLOW)
    sde = reverse.forward
    alpha_ts, sigma_ts = sde.transition(t, t_next)
    score = reverse.score_fn(x, t)
    x_mean = (x + expand_to(sigma_ts**2, x) * score) / expand_to(alpha_ts, x)
    std = sigma_ts * sde.sigma(t_next) / sde.sigma(t)
    return x_mean + expand_to(std, x) * standard_normal_like(x, generator), x_mean


@register_predictor("none")
def no_predictor(reverse: ReverseSDE, x: Tensor, t: Tensor, t_next: Tensor, *, generator=None):
    """No predictor: the state is carried to ``t_next`` unchanged (corrector-only sampling)."""
    return x, x


# ---------------------------------------------------------------------- correctors
def _langevin_alpha(sde: SDE, t: Tensor) -> Tensor:
    r"""$\alpha_i = (\alpha(t)/\alpha(t - T/N))^2$: DDPM's $1 - \beta_i$ for VP, 1 for VE."""
    return (sde.alpha(t) / sde.alpha((t - sde.T / sde.N).clamp(min=0.0))) ** 2


def _langevin_update(x: Tensor, score: Tensor, step: Tensor, generator) -> tuple[Tensor, Tensor]:
    r"""$x' = x + \epsilon\, s + \sqrt{2\epsilon}\, z$ with a per-sample step size $\epsilon$ ``[B]``."""
    x_mean = x + expand_to(step, x) * score
    return x_mean + expand_to(torch.sqrt(2 * step), x) * standard_normal_like(x, generator), x_mean


@register_corrector("langevin")
def langevin(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, *, snr: float, n_steps: int, generator=None):
    r"""Langevin corrector (Song et al. 2021, Algorithm 5): ``n_steps`` of
    $x \leftarrow x + \epsilon s + \sqrt{2\epsilon} z$ with
    $\epsilon = 2\alpha_i (r \|z\| / \|s\|)^2$, ``r = snr``; the norms are averaged over the batch
    as in the reference implementation."""
    alpha_i = _langevin_alpha(sde, t)
    x_mean = x
    for _ in range(n_steps):
        score = score_fn(x, t)
        grad_norm = score.reshape(score.shape[0], -1).norm(dim=-1).mean()
        noise_norm = standard_normal_like(x, generator).reshape(x.shape[0], -1).norm(dim=-1).mean()
        step = 2 * alpha_i * (snr * noise_norm / grad_norm) ** 2
        x, x_mean = _langevin_update(x, score, step, generator)
    return x, x_mean


@register_corrector("annealed_langevin")
def annealed_langevin(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, *, snr: float, n_steps: int, generator=None):
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1, as in Song et al. 2021): step size
    $\epsilon = 2\alpha_i (r\,\sigma(t))^2$, ``r = snr``."""
    step = 2 * _langevin_alpha(sde, t) * (snr * sde.sigma(t)) ** 2
    x_mean = x
    for _ in range(n_steps):
        x, x_mean = _langevin_update(x, score_fn(x, t), step, generator)
    return x, x_mean


@register_corrector("none")
def no_corrector(sde: SDE, score_fn: ScoreFn, x: Tensor, t: Tensor, *, snr: float, n_steps: int, generator=None):
    """No corrector."""
    return x, x


# ---------------------------------------------------------------------- the sampler
@register_sampler("pc", steps=1000, schedule="uniform", constraint=True)
def pc_sampler(
    run: Sampling,
    x: Tensor,
    grid: Tensor,
    *,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    corrector_steps: int = 1,
    snr: float = 0.16,
    denoise: bool = True,
    probability_flow: bool = False,
) -> Tensor:
    r"""Predictor–corrector sampling (Song et al. 2021, Algorithm 1): on the grid ``T = t_0 > ... > t_N = t_min``,
    for each i a predictor step $t_i \to t_{i+1}$, then ``corrector_steps`` corrector steps at
    $t_{i+1}$; finally Tweedie's $\hat x_0$ at ``t_min`` when ``denoise``.
    NFE = ``N * (1 + corrector_steps) + denoise`` (predictor ``none`` or corrector ``none`` cost nothing)."""
    predict = _PREDICTORS[check_in_registry("predictor", predictor, list(_PREDICTORS))]
    correct = _CORRECTORS[check_in_registry("corrector", corrector, list(_CORRECTORS))]
    if predictor == "none" and corrector == "none":
        raise ValueError("predictor and corrector cannot both be 'none': nothing would move the prior sample")
    corrector_steps = check_positive_int("corrector_steps", corrector_steps)
    snr = check_positive("snr", snr)
    if predictor == "ancestral_sampling" and probability_flow:
        raise ValueError(_NO_ANCESTRAL_FLOW)
    reverse = run.sde.reverse(run.score, probability_flow)
    t_values = grid.tolist()

    def step(i: int, x: Tensor, t: Tensor, t_next: Tensor) -> Tensor:
        x, _ = predict(reverse, x, t, t_next, generator=run.generator)
        if corrector != "none":  # constrained after the predictor too (the loop constrains after the step)
            x = run.constrain(x, t_values[i + 1])
            x, _ = correct(run.sde, run.score, x, t_next, snr=snr, n_steps=corrector_steps, generator=run.generator)
        return x

    return run.integrate(x, grid, step, f"pc {predictor}+{corrector}", denoise)
