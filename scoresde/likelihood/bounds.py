r"""Variational bounds on $-\log p(x)$: the continuous-time ELBO of the reverse SDE (`elbo`) and the discrete
DDPM chain's bound (`ddpm_bound`), each an unbiased Monte-Carlo estimate with its standard error.

Both evaluate the forward process from the data at ``t_min`` (the same data end as the exact likelihood of
`scoresde.likelihood`), so that bounds and the exact NLL are reported on the same footing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import check_in_registry, check_positive_int, expand_to, renamed_t_min, standard_normal_like
from .._deprecated import ScoresdeDeprecationWarning
from ..processes.base import SDE, check_sde, log_snr_times
from ..processes.divergence import DIVERGENCES, divergence_fn, draw_probes
from ..processes.grids import time_grid
from ..processes.reverse_variance import (
    ChainStep,
    ScoreMoments,
    chain_step,
    check_variance,
    decoder_step,
    learned_variance_fraction,
    reverse_variance,
)
from ..processes.score import ScoreFn
from ..processes.seam import CountingScore, as_score, tweedie
from .pf_ode import check_data, likelihood_t_min

__all__ = ["elbo", "ddpm_bound", "ELBOResult", "TIME_SAMPLINGS"]


@dataclass
class ELBOResult:
    """Output of `elbo`: the per-sample bound ``bound [B]`` on $-\\log p(x)$ (nats), its Monte-Carlo
    standard error over t ``standard_error [B]``, the prior term, NFE and settings."""

    bound: Tensor
    standard_error: Tensor
    prior_term: Tensor
    nfe: int
    settings: dict = field(default_factory=dict)

    def raw_bits_per_dim(self, dim: int) -> Tensor:
        """The bound in bits per dimension of the model's continuous range, $\\text{bound}/(D\\ln 2)$, *without* the
        discretisation offset (like `BitsPerDimResult.bpd_raw`; `scoresde.bits_per_dim` adds it)."""
        return self.bound / (dim * math.log(2))

    def bits_per_dim(self, dim: int) -> Tensor:
        """Deprecated name of `raw_bits_per_dim` (it did not mean what the module function `bits_per_dim` means)."""
        warnings.warn(
            "ELBOResult.bits_per_dim is deprecated: it omits the discretisation offset; use raw_bits_per_dim, "
            "or scoresde.bits_per_dim(..., estimator='elbo') for the figure of discrete data",
            ScoresdeDeprecationWarning,
            stacklevel=2,
        )
        return self.raw_bits_per_dim(dim)


TIME_SAMPLINGS = ("uniform", "log_snr")


def _time_draws(sde: SDE, t_min: float, n_times: int, sampling: str, generator, B: int, opts: dict):
    r"""Stratified draws of t on ``[t_min, T]`` with their importance weights $1/p(t)$, ``n_times`` of ``[B]``.

    ``"uniform"``: $p(t) = 1/(T - t_{min})$. ``"log_snr"``: uniform in the log-SNR
    (`scoresde.processes.base.log_snr_times`, density $\propto g^2/\sigma^2$)."""
    if sampling == "uniform":
        width = sde.T - t_min
        for k in range(n_times):
            t = t_min + width * (k + torch.rand(B, generator=generator, **opts)) / n_times
            yield t, torch.full_like(t, width)
        return
    for k in range(n_times):
        yield log_snr_times(sde, t_min, (k + torch.rand(B, generator=generator, dtype=torch.float64)) / n_times, **opts)


def _noised(x: Tensor, alpha: Tensor, sigma: Tensor, generator) -> Tensor:
    r"""$\alpha x + \sigma z$, $z \sim \mathcal N(0, I)$: ``x`` carried along a transition with coefficients ``[B]``."""
    return expand_to(alpha, x) * x + expand_to(sigma, x) * standard_normal_like(x, generator)


def _gaussian_prior_term(sde: SDE, x: Tensor, a_T: Tensor, s_T: Tensor) -> Tensor:
    r"""$-\mathbb E\log\mathcal N(x_T; 0, \sigma_p^2 I)$ for $x_T \sim \mathcal N(a_T x, s_T^2 I)$, in closed form."""
    B, dim = x.shape[0], x[0].numel()
    p2 = sde.prior_std**2
    sq = x.reshape(B, -1).pow(2).sum(1) * a_T**2 + dim * s_T**2
    return 0.5 * dim * math.log(2 * math.pi * p2) + 0.5 * sq / p2


def _prior_term(sde: SDE, x: Tensor, t0: float, prior_logp, n_prior_draws: int, generator) -> Tensor:
    r"""$-\mathbb E_{x_T \sim q(x_T|x_{t_0})}\log\pi(x_T)$: closed form for the SDE's Gaussian prior,
    ``n_prior_draws`` draws for a custom ``prior_logp``."""
    B = x.shape[0]
    a_T, s_T = sde.transition(
        torch.full((B,), sde.T, dtype=x.dtype, device=x.device), torch.full((B,), t0, dtype=x.dtype, device=x.device)
    )
    if prior_logp is None:
        return _gaussian_prior_term(sde, x, a_T, s_T)
    draws = [
        prior_logp(_noised(x, a_T, s_T, generator)) for _ in range(check_positive_int("n_prior_draws", n_prior_draws))
    ]
    return -torch.stack(draws).mean(0)


def elbo(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    n_times: int = 64,
    t_min: float | None = None,
    time_sampling: str = "uniform",
    divergence: str = "exact",
    generator: torch.Generator | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    n_prior_draws: int = 16,
    eps: float | None = None,
) -> ELBOResult:
    r"""Continuous-time variational bound on $-\log q_{t_{min}}(x)$ for the reverse-SDE model
    (Song, Durkan, Murray & Ermon 2021, Theorem 1, in its implicit score-matching form; Huang et al. 2021),
    with the forward process started from the data at ``t_min`` (default 1e-5, `LIKELIHOOD_T_MIN`; ``eps`` is its
    deprecated name):

    $$-\log q_{t_{min}}(x) \le -\mathbb E\log\pi(x_T)
    + \tfrac12\int_{t_{min}}^{T} \mathbb E_{x_t \sim p(x_t|x)}\Big[g^2\big(\|s_\theta\|^2
    + 2\nabla\!\cdot s_\theta\big) - 2 D f\Big] dt,$$

    $x_t = \alpha_{t|t_{min}} x + \sigma_{t|t_{min}}\epsilon$. The implicit form (Stein's identity turns the
    denoising form's $1/\sigma$ terms into $\nabla\cdot s$) has no singularity at ``t_min``.
    The time integral is estimated with ``n_times`` stratified draws per sample (one $x_t$ each),
    ``time_sampling="uniform"`` in t or ``"log_snr"`` (importance sampling, uniform in the log-SNR: density
    $\propto g^2/\sigma^2$, weights $1/p(t)$); the divergence is ``"exact"`` (``D`` vector-Jacobian
    products: small ``D``) or ``"hutchinson"`` (one Rademacher probe per draw: unbiased, for images).
    With the exact score and $\pi = p_T$ the bound is tight: it equals $-\log p_{t_{min}}(x)$.
    ``prior_logp`` replaces the SDE's Gaussian prior (then $\mathbb E\log\pi(x_T)$ is estimated
    with ``n_prior_draws`` draws; for the Gaussian prior it is closed-form).
    """
    t_min = renamed_t_min(t_min, eps, "elbo")
    check_sde(sde)
    check_data(x)
    n_times = check_positive_int("n_times", n_times)
    t_min = likelihood_t_min(sde, t_min)
    check_in_registry("time sampling", time_sampling, TIME_SAMPLINGS, "time_sampling")
    check_in_registry("divergence", divergence, DIVERGENCES)
    score = CountingScore(as_score(sde, score_fn, "elbo"))
    B, dim = x.shape[0], x[0].numel()
    opts = {"dtype": x.dtype, "device": x.device}
    prior_term = _prior_term(sde, x, t_min, prior_logp, n_prior_draws, generator)
    values = []
    for t, weight in _time_draws(sde, t_min, n_times, time_sampling, generator, B, opts):
        a, s = sde.transition(t, torch.full_like(t, t_min))
        xt = _noised(x, a, s, generator).requires_grad_(True)
        probes = draw_probes("rademacher", 1, x, generator) if divergence == "hutchinson" else None
        with torch.enable_grad():
            s_theta = score(xt, t)
            div = divergence_fn(divergence, probes)(s_theta, xt)
        flat = s_theta.reshape(B, -1)
        values.append(
            0.5 * (sde.g2(t) * (flat.detach().pow(2).sum(1) + 2 * div.detach()) - 2 * dim * sde.f(t)) * weight
        )
    values = torch.stack(values)  # [n_times, B]: each an unbiased estimate of the integral
    bound = prior_term + values.mean(0)
    se = values.std(0) / math.sqrt(n_times) if n_times > 1 else torch.full_like(bound, float("nan"))
    settings = {
        "n_times": n_times,
        "t_min": t_min,
        "prior": "custom" if prior_logp else "sde",
        "time_sampling": f"stratified {time_sampling}",
        "divergence": divergence,
    }
    return _elbo_result(bound, se, prior_term, score.calls, settings)


def _elbo_result(bound: Tensor, se: Tensor, prior_term: Tensor, nfe: int, settings: dict) -> ELBOResult:
    def cpu(v: Tensor) -> Tensor:
        return v.detach().to(torch.float64).cpu()

    return ELBOResult(bound=cpu(bound), standard_error=cpu(se), prior_term=cpu(prior_term), nfe=nfe, settings=settings)


def ddpm_bound(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    *,
    n_steps: int = 1000,
    n_terms: int | None = None,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    prior_logp: Callable[[Tensor], Tensor] | None = None,
    n_prior_draws: int = 16,
    eps: float | None = None,
    variance: str = "beta_tilde",
    moments: ScoreMoments | None = None,
    schedule: str = "uniform",
    data_range: tuple[float, float] | None = None,
) -> ELBOResult:
    r"""The discrete-chain variational bound of DDPM (Ho et al. 2020, Eq. 5) on $-\log p_\theta(x)$,

    $$L = \underbrace{D_{KL}(q(x_N|x_0)\,\|\,\pi)}_{L_T}
    + \sum_{i=2}^{N} \underbrace{\mathbb E_q D_{KL}(q(x_{i-1}|x_i, x_0)\,\|\,p_\theta(x_{i-1}|x_i))}_{L_{i-1}}
    \underbrace{- \mathbb E_q\log p_\theta(x_0|x_1)}_{L_0},$$

    on the chain $t_i = t_{min} + i(T - t_{min})/N$ (for VP: DDPM's linear-beta chain; any SDE's exact
    transitions, so SMLD's chain for VE). $x_0 = x$ is the data at ``t_min``. With
    $a = \alpha_{t_i|t_{i-1}}, s^2 = \sigma^2_{t_i|t_{i-1}}, A = \alpha_{t_{i-1}|t_0}, S^2 = \sigma^2_{t_{i-1}|t_0}$
    and $\sigma_i^2 = a^2S^2 + s^2$, the posterior is
    $\mathcal N\big((aS^2 x_i + s^2 A x_0)/\sigma_i^2,\ s^2S^2/\sigma_i^2\big)$, and the model is the
    same Gaussian with $x_0$ replaced by the Tweedie estimate
    $\hat x_0 = (x_i + \sigma_i^2 s_\theta(x_i, t_i))/\alpha_{t_i|t_0}$ (DDPM's eps-parameterisation
    with the posterior variance $\tilde\beta$), so
    $L_{i-1} = (s^2A/\sigma_i^2)^2\|x_0 - \hat x_0\|^2 / (2 s^2S^2/\sigma_i^2)$. The decoder is
    $p_\theta(x_0|x_1) = \mathcal N(\hat x_0(x_1), \sigma_{t_1|t_0}^2 I)$ (DDPM's $\beta_1$) and
    $L_T$ is closed-form for the Gaussian prior (``prior_logp`` replaces it, as in `elbo`).

    Each term uses one draw $x_i \sim q(x_i|x_0)$. ``n_terms=None`` sums all ``N`` terms (``N`` score
    evaluations per sample; ``standard_error`` is then NaN: one draw per term gives no spread); an integer
    estimates the sum from that many stratified indices (unbiased, with its standard error).

    ``variance`` chooses the reverse chain's variance $\Sigma$ (`scoresde.processes.reverse_variance`: ``beta_tilde``,
    the posterior's and the default, as above; ``beta``; ``learned``, the network's own per-dimension variance, for
    a model trained with ``learn_variance``; ``analytic``, which needs ``moments``, the table of
    $\Gamma_t = \mathbb E\|s\|^2/d$, and takes ``data_range``).
    With $\Sigma \ne \tilde\beta$ each KL term gains $\tfrac d2(\log(\Sigma/\tilde\beta) + \tilde\beta/\Sigma - 1)$ and
    divides the mean's error by $2\Sigma$; the decoder's variance is $\Sigma$ of the last step. ``schedule`` spaces the
    ``N + 1`` chain times like the samplers' grids (`scoresde.samplers.time_grid`: ``uniform`` in t, ``log_snr``,
    ``edm``, ...): a strided sub-chain of a finer chain, its betas respaced as $1 - \alpha^2_{t_i}/\alpha^2_{t_{i-1}}$.
    """
    t_min = renamed_t_min(t_min, eps, "ddpm_bound")
    check_sde(sde)
    check_data(x)
    n_steps, n_terms = _checked_steps(n_steps, n_terms)
    t_min = likelihood_t_min(sde, t_min)
    check_variance(variance, moments)
    score = CountingScore(as_score(sde, score_fn, "ddpm_bound"))
    fraction_fn = learned_variance_fraction(score) if variance == "learned" else None
    B, dim = x.shape[0], x[0].numel()
    opts = {"dtype": x.dtype, "device": x.device}
    times = time_grid(sde, n_steps, schedule, t_min).flip(0).to(**opts)
    t0 = torch.full((B,), t_min, **opts)

    def reverse_step(i: Tensor, x_i: Tensor, decoder: bool = False) -> tuple[ChainStep, Tensor]:
        """The chain's coefficients from times[i] to times[i - 1] and the model's variance Sigma ``[B, 1 or D]``
        (``x_i``: where the score was just evaluated, for a learned variance)."""
        step = chain_step(sde, times[i], times[i - 1], t0)
        if decoder and fraction_fn is not None:
            step = decoder_step(step, chain_step(sde, times[i + 1], times[i], t0))
        gamma = moments.at(sde, times[i]) if variance == "analytic" else None
        fraction = fraction_fn(x_i, times[i]) if fraction_fn is not None else None
        var = reverse_variance(variance, step, gamma=gamma, fraction=fraction, data_range=data_range)
        return step, var.reshape(B, -1)

    def draw(i: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        alpha_i0, sigma_i0 = sde.transition(times[i], t0)
        return _noised(x, alpha_i0, sigma_i0, generator), alpha_i0, sigma_i0

    sigma_T0 = sde.transition(times[-1].expand(B), t0)[1]  # L_T: the prior's cross-entropy less q(x_T|x_0)'s entropy
    entropy = 0.5 * dim * (1 + torch.log(2 * math.pi * sigma_T0**2))
    prior_term = _prior_term(sde, x, t_min, prior_logp, n_prior_draws, generator) - entropy
    one = torch.ones(B, dtype=torch.long, device=x.device)  # the decoder term L_0
    x_1, alpha_10, sigma_10 = draw(one)
    residual, decoder_var = (
        (x - tweedie(x_1, score(x_1, times[one]), alpha_10, sigma_10)).reshape(B, -1).pow(2),
        reverse_step(one, x_1, True)[1],
    )
    decoder = (0.5 * torch.log(2 * math.pi * decoder_var) + 0.5 * residual / decoder_var).sum(1)
    # KL terms L_{i-1}, i = 2..N (per-sample indices when sampled)
    terms = []
    for i in _term_indices(n_steps, n_terms, generator, B, x.device):
        x_i, alpha_i0, sigma_i0 = draw(i)
        err = (x - tweedie(x_i, score(x_i, times[i]), alpha_i0, sigma_i0)).reshape(B, -1).pow(2)
        step, var = reverse_step(i, x_i)
        coef, post_var = step.a[:, None], step.beta_tilde[:, None]  # the posterior's x0 coefficient and variance
        terms.append((0.5 * (torch.log(var / post_var) + post_var / var - 1) + coef**2 * err / (2 * var)).sum(1))
    total, se = _kl_sum(torch.stack(terms), n_steps, n_terms)
    settings = {"n_steps": n_steps, "n_terms": n_terms, "t_min": t_min, "prior": "custom" if prior_logp else "sde",
                "grid": schedule, "variance": variance,
                "data_range": list(data_range) if data_range is not None else None}  # fmt: skip
    return _elbo_result(prior_term + decoder + total, se, prior_term, score.calls, settings)


def _checked_steps(n_steps: int, n_terms: int | None) -> tuple[int, int | None]:
    """`ddpm_bound`'s chain length (at least 2: one decoder step and one KL term) and number of sampled KL terms
    (at most ``n_steps - 1``; None: all), checked in one line each."""
    n_steps = check_positive_int("n_steps", n_steps)
    if n_steps < 2:
        raise ValueError(f"n_steps must be at least 2 (one decoder step and one KL term), got {n_steps}")
    if n_terms is not None:
        n_terms = check_positive_int("n_terms", n_terms)
        if n_terms > n_steps - 1:
            raise ValueError(
                f"n_terms must be at most n_steps - 1 = {n_steps - 1}, got {n_terms}; pass None to sum all terms"
            )
    return n_steps, n_terms


def _kl_sum(terms: Tensor, n_steps: int, n_terms: int | None) -> tuple[Tensor, Tensor]:
    """The KL terms ``[n, B]`` summed over the chain (their exact sum, or ``n_steps - 1`` times the mean of the
    ``n_terms`` sampled ones) and its Monte-Carlo standard error (NaN when it cannot be estimated)."""
    scale = n_steps - 1
    total = terms.sum(0) if n_terms is None else scale * terms.mean(0)
    if n_terms is None or n_terms < 2:
        return total, torch.full_like(total, float("nan"))
    return total, scale * terms.std(0) / math.sqrt(n_terms)


def _term_indices(n_steps: int, n_terms: int | None, generator, batch: int, device) -> list[Tensor]:
    """Index tensors ``[B]``: every ``i = 2..N`` in turn, or ``n_terms`` stratified draws per sample."""
    if n_terms is None:
        return [torch.full((batch,), i, dtype=torch.long, device=device) for i in range(2, n_steps + 1)]
    n = n_steps - 1
    out = []
    for k in range(n_terms):
        u = (k + torch.rand(batch, generator=generator, dtype=torch.float64)) * n / n_terms
        out.append((2 + u.floor().clamp(max=n - 1)).long().to(device))
    return out
