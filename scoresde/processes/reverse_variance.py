r"""The variance of the discrete reverse chain: DDPM's two fixed choices and the analytic optimum (Analytic-DPM).

A reverse step from $t$ to $s < t$ of the chain keeps the posterior's mean with $x_0$ replaced by Tweedie's estimate
$\hat x_0 = (x_t + \sigma_t^2 s_\theta)/\alpha_t$,

$$p(x_s \mid x_t) = \mathcal N\big(a\,\hat x_0 + b\,x_t,\ \Sigma\big), \qquad
a = \frac{\alpha_s\,\sigma_{t|s}^2}{\sigma_t^2}, \quad b = \frac{\alpha_{t|s}\,\sigma_s^2}{\sigma_t^2},$$

and the choices of $\Sigma$ (all isotropic) are, with $\beta = \sigma_{t|s}^2$ the forward step's variance and
$\tilde\beta = \sigma_{t|s}^2\sigma_s^2/\sigma_t^2$ the exact posterior's:

- ``beta``: $\Sigma = \beta$, the upper choice (DDPM's $\sigma_t^2 = \beta_t$; optimal for $x_0 \sim \mathcal N(0, I)$);
- ``beta_tilde``: $\Sigma = \tilde\beta$, the lower choice (optimal for a single point $x_0$; the default);
- ``learned``: $\log\Sigma = f\log\beta + (1 - f)\log\tilde\beta$ per dimension, with $f = (v(x_t, t) + 1)/2$ the
  network's extra output (Improved DDPM, Nichol & Dhariwal 2021), trained with the hybrid objective
  `scoresde.training.losses.hybrid_loss`; on a strided sub-chain the same $f$ interpolates the respaced $\beta$,
  $\tilde\beta$;
- ``analytic``: the optimum of the step's expected KL (Bao et al. 2022, Analytic-DPM),
  $$\Sigma^* = \tilde\beta + a^2\,\frac{\sigma_t^2}{\alpha_t^2}\Big(1 - \sigma_t^2\,\Gamma_t\Big), \qquad
  \Gamma_t = \frac{\mathbb E\,\|\nabla\log p_t(x_t)\|^2}{d},$$
  because $\mathbb E\,\mathrm{tr}\,\mathrm{Cov}(x_0 \mid x_t) = d\,\sigma_t^2(1 - \sigma_t^2\Gamma_t)/\alpha_t^2$
  (Tweedie's second-order identity). $\Gamma_t$ comes from the model's scores on perturbed data (`score_moments`),
  once per run. It is clipped to the paper's bounds
  $\tilde\beta \le \Sigma^* \le \tilde\beta + a^2\sigma_t^2/\alpha_t^2$, and for data in a known range
  $[l, h]$ also $\Sigma^* \le \tilde\beta + a^2 (h - l)^2/4$ (Theorem 2 of the paper).

The chain's last step to the data (the decoder) has $\tilde\beta = 0$: ``beta`` and ``beta_tilde`` use $\beta_1$ there
(DDPM), ``learned`` replaces the decoder's $\tilde\beta = 0$ by the next step's (Improved DDPM's clipped
log variance; `decoder_step`), ``analytic`` uses
$\mathbb E\|x_0 - \hat x_0\|^2/d = \sigma_1^2(1 - \sigma_1^2\Gamma_1)/\alpha_1^2$.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from .._checks import check_finite, check_in_registry, expand_to, standard_normal_like
from .base import SDE
from .score import ScoreFn
from .seam import require

__all__ = [
    "VARIANCES",
    "ScoreMoments",
    "score_moments",
    "ChainStep",
    "chain_step",
    "decoder_step",
    "reverse_variance",
    "check_variance",
    "learned_variance_fraction",
]

VARIANCES = ("beta", "beta_tilde", "learned", "analytic")


@dataclass(frozen=True)
class ChainStep:
    r"""Coefficients of one reverse step from ``t`` to ``s``: ``a`` (of $\hat x_0$), ``b`` (of $x_t$), ``beta``
    ($\sigma_{t|s}^2$), ``beta_tilde`` and $\sigma_t^2/\alpha_t^2$ (``noise_ratio``); tensors shaped like ``t``."""

    a: Tensor
    b: Tensor
    beta: Tensor
    beta_tilde: Tensor
    noise_ratio: Tensor
    sigma_t2: Tensor


def chain_step(sde: SDE, t: Tensor, s: Tensor, t0: Tensor | None = None) -> ChainStep:
    r"""The `ChainStep` of ``sde`` from ``t`` down to ``s``, for data at ``t0`` (default 0: the marginals' own
    $\alpha, \sigma$; else the transitions from ``t0``). At ``s = t0`` (the decoder) ``beta_tilde`` is 0."""
    if t0 is None:
        alpha_s, sigma_s, alpha_t, sigma_t = sde.alpha(s), sde.sigma(s), sde.alpha(t), sde.sigma(t)
    else:
        (alpha_s, sigma_s), (alpha_t, sigma_t) = sde.transition(s, t0), sde.transition(t, t0)
    alpha_ts, sigma_ts = sde.transition(t, s)
    beta, sigma_t2 = sigma_ts**2, sigma_t**2
    return ChainStep(
        a=alpha_s * beta / sigma_t2,
        b=alpha_ts * sigma_s**2 / sigma_t2,
        beta=beta,
        beta_tilde=beta * sigma_s**2 / sigma_t2,
        noise_ratio=sigma_t2 / alpha_t**2,
        sigma_t2=sigma_t2,
    )


def decoder_step(step: ChainStep, next_step: ChainStep) -> ChainStep:
    r"""The decoder's step with its $\tilde\beta = 0$ replaced by ``next_step``'s (the step into the decoder's
    start), so that the learned variance's $\log\tilde\beta$ stays finite (Improved DDPM's clipped log variance)."""
    return replace(step, beta_tilde=next_step.beta_tilde)


def check_variance(
    choice: str, moments: ScoreMoments | None, choices: tuple[str, ...] = VARIANCES, what: str = "reverse variance"
) -> str:
    """``choice`` if it is one of ``choices`` and has what it needs (``analytic``: the ``moments`` table), else a
    one-line ``ValueError``; the check of every user of the chain (the ``ddpm`` and ``ddim`` samplers, `ddpm_bound`)."""
    check_in_registry(what, choice, choices)
    if choice == "analytic" and moments is None:
        raise ValueError(
            "variance='analytic' needs moments: "
            "scoresde.processes.reverse_variance.score_moments(sde, score, data, times)"
        )
    return choice


def learned_variance_fraction(score_fn: ScoreFn) -> Callable[[Tensor, Tensor], Tensor]:
    """``score_fn``'s learned-variance fraction ``f(x, t)`` (a `scoresde.ScoreModel` trained with
    ``learn_variance``), or a one-line ``ValueError`` saying how to get one."""
    require(score_fn, "variance='learned'", variance=True)
    return score_fn.variance_fraction


@dataclass(repr=False)
class ScoreMoments:
    r"""$\Gamma_t = \mathbb E\|\nabla\log p_t\|^2 / d$ at ``times`` (increasing, float64), with standard errors:
    what the analytic variance needs. `at` interpolates linearly in $\lambda = $ log-SNR (clamped to the table)."""

    times: Tensor
    gamma: Tensor
    standard_error: Tensor
    n: int
    belongs_to: dict | None = None
    """What the table was computed for (`scoresde.processes.artefacts.belongs_to`: SDE, data set, model)."""

    def at(self, sde: SDE, t: Tensor) -> Tensor:
        """$\\Gamma$ at times ``t`` (any shape), linear in the log-SNR between the table's times."""
        lam_table = sde.log_snr(self.times).flip(0).to(t.device)  # increasing
        gamma = self.gamma.flip(0).to(t.device)
        lam = torch.minimum(torch.maximum(sde.log_snr(t.to(torch.float64)), lam_table[0]), lam_table[-1])
        k = torch.clamp(torch.searchsorted(lam_table, lam.contiguous()) - 1, 0, len(lam_table) - 2)
        w = (lam - lam_table[k]) / (lam_table[k + 1] - lam_table[k])
        return (gamma[k] + w * (gamma[k + 1] - gamma[k])).to(device=t.device, dtype=t.dtype)

    def __repr__(self) -> str:
        first, last = float(self.times[0]), float(self.times[-1])
        return f"ScoreMoments({len(self.times)} times in [{first:.4g}, {last:.4g}], n={self.n})"

    def to_tensors(self) -> dict[str, Tensor]:
        return {
            "times": self.times,
            "gamma": self.gamma,
            "standard_error": self.standard_error,
            "n": torch.tensor(self.n),
        }

    def save(self, path: str | Path) -> None:
        """Write the table as safetensors, atomically."""
        from safetensors.torch import save

        from .._io import write_atomic

        metadata = None if self.belongs_to is None else {"belongs_to": json.dumps(self.belongs_to, sort_keys=True)}
        write_atomic(Path(path), save({k: v.contiguous() for k, v in self.to_tensors().items()}, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> ScoreMoments:
        """Read a table written by `save` (safetensors: no code runs); a file that is not one is a one-line
        ``ValueError``."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as fh:
                record = (fh.metadata() or {}).get("belongs_to")
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
            moments = cls(tensors["times"], tensors["gamma"], tensors["standard_error"], int(tensors["n"]))
            moments.belongs_to = None if record is None else json.loads(record)
        except Exception as exc:  # safetensors' own errors for a foreign or truncated file, a missing tensor
            raise ValueError(f"{path} is not a table of score moments ({type(exc).__name__}: {exc})") from None
        return moments


@torch.no_grad()
def score_moments(
    sde: SDE,
    score_fn: ScoreFn,
    x0: Tensor,
    times: Tensor,
    *,
    batch_size: int = 8192,
    generator: torch.Generator | None = None,
) -> ScoreMoments:
    r"""Monte-Carlo $\Gamma_t = \mathbb E_{x_0, \epsilon}\,\|s_\theta(\alpha_t x_0 + \sigma_t\epsilon, t)\|^2 / d$ at
    each of ``times``, one noise draw per data point ``x0 [n, ...]``; returns the table with standard errors. With the
    exact score this is the Fisher information of $p_t$ per dimension."""
    check_finite("x0", x0)
    times = torch.as_tensor(times, dtype=torch.float64).flatten().sort().values
    n, dim = x0.shape[0], x0[0].numel()
    values = torch.empty(len(times) * n, dtype=torch.float64)
    t_rows = times.to(device=x0.device, dtype=x0.dtype)
    for start in range(0, len(values), batch_size):  # (time, point) pairs, many times per score call
        rows = torch.arange(start, min(start + batch_size, len(values)), device=x0.device)
        part, tt = x0[rows % n], t_rows[rows // n]
        x_t = sde.perturb(part, tt, standard_normal_like(part, generator))
        values[start : start + len(rows)] = score_fn(x_t, tt).reshape(len(rows), -1).double().pow(2).sum(1).cpu() / dim
    values = values.reshape(len(times), n)
    se = values.std(1) / math.sqrt(n) if n > 1 else torch.full((len(times),), float("nan"), dtype=torch.float64)
    return ScoreMoments(times, values.mean(1), se, n)


def reverse_variance(
    choice: str,
    step: ChainStep,
    *,
    gamma: Tensor | None = None,
    fraction: Tensor | None = None,
    data_range: tuple[float, float] | None = None,
) -> Tensor:
    r"""$\Sigma$ of one reverse step (module docstring) for ``choice`` in `VARIANCES`, shaped like the step's
    coefficients (``learned``: like ``fraction``, the network's $f = (v + 1)/2$ per dimension, the step's coefficients
    broadcasting over its leading axis). ``gamma``: $\Gamma_t$ (``analytic``); ``data_range``: $(l, h)$ of the data,
    tightening the analytic upper bound. ``choice`` is not checked here: its user checks it once
    (`check_variance`)."""
    if choice == "learned":
        if fraction is None:
            raise ValueError("the 'learned' variance needs the network's fraction f = (v + 1)/2 (variance_fraction)")
        log_beta, log_beta_tilde = (expand_to(c.log(), fraction) for c in (step.beta, step.beta_tilde))
        return torch.exp(fraction * log_beta + (1 - fraction) * log_beta_tilde)
    if choice == "beta" or (choice == "beta_tilde" and bool((step.beta_tilde == 0).all())):
        return step.beta  # the decoder step of both fixed choices: DDPM's beta_1
    if choice == "beta_tilde":
        return step.beta_tilde
    if gamma is None:
        raise ValueError("the 'analytic' variance needs Gamma_t = E|score|^2 / d (reverse_variance.score_moments)")
    extra = step.a**2 * step.noise_ratio * (1 - step.sigma_t2 * gamma).clamp(0.0, 1.0)
    if data_range is not None:
        low, high = data_range
        extra = torch.minimum(extra, step.a**2 * (high - low) ** 2 / 4)
    return step.beta_tilde + extra
