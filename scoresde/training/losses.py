r"""Denoising score matching (Vincent 2011; Song et al. 2021, Eq. 7), continuous and on the N-step chains.

For $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$ the per-sample loss is

$$\ell(x_0) = \tfrac12\,\lambda(t)\,\big\|s_\theta(x_t, t) + \epsilon/\sigma(t)\big\|^2
= \tfrac12\,\frac{\lambda(t)}{\sigma(t)^2}\,\big\|\sigma s_\theta + \epsilon\big\|^2,$$

computed from $\sigma s_\theta$ (``ScoreModel.scaled_score``) so that no small $\sigma$ is
divided by. Weightings $\lambda$:

- ``"sigma2"``: $\lambda = \sigma^2$ (Song et al. 2021's default; NCSN's for VE);
- ``"likelihood"``: $\lambda = g^2$ (Song, Durkan, Murray & Ermon 2021: the loss then bounds the
  KL, so it trains for likelihood); with ``importance_sampling`` t is drawn uniformly in the log-SNR,
  density $p(t) \propto g^2/\sigma^2$, and reweighted by $1/((T-t_{min})p(t))$, which leaves
  the expectation unchanged and removes most of its variance;
- ``"eps"``: DDPM's $L_{simple} = \|\hat\epsilon - \epsilon\|^2$ (mean over dimensions, no 1/2).

By default t is uniform on ``[t_min, T]`` and the loss is an unbiased estimate of
$\mathbb E_{t \sim U}\,\ell$. With ``n_steps = N`` t is uniform on the N-step chain
$t_i = t_{min} + (T - t_{min})(i - 1)/(N - 1)$ (DDPM's linear-beta chain for VP, SMLD's geometric
sigmas for VE): `ddpm_loss` and `smld_loss` are those discrete losses.

**Hybrid objective** (Improved DDPM, Nichol & Dhariwal 2021) for a network with a learned reverse variance
(`hybrid_loss`): on the N-step chain $L_{hybrid} = L_{simple} + \lambda L_{vlb}$, where $L_{vlb} = N\,L_i$ (one term of
the chain's bound, bits per dimension, i uniform or importance sampled by `VLBTimeSampler`) sees the mean through a
stop-gradient, so it trains the variance only and $L_{simple}$ the mean.

Since $\mathbb E\|\sigma s_\theta + \epsilon\|^2 = \sigma^2\mathbb E\|s_\theta - \nabla\log p_t\|^2
+ D - \sigma^2\mathbb E\|\nabla\log p_t\|^2$, the loss at the exact score is its irreducible minimum.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from .._checks import (
    check_callable,
    check_finite,
    check_in_registry,
    check_positive_int,
    expand_to,
    renamed_t_min,
    standard_normal_like,
)
from ..config.train import WEIGHTINGS
from ..processes.base import SDE, check_sde, log_snr_times
from ..processes.reverse_variance import chain_step, reverse_variance
from ..processes.score import ScoreFn
from ..processes.seam import require, sigma_score, x0_from_sigma_score

__all__ = [
    "dsm_loss",
    "ddpm_loss",
    "smld_loss",
    "classifier_loss",
    "hybrid_loss",
    "HybridLoss",
    "VLBTimeSampler",
    "REDUCTIONS",
]

REDUCTIONS = ("sum", "mean")


def _draw_times(
    sde: SDE, t_min: float, B: int, importance: bool, n_steps: int | None, generator, opts
) -> tuple[Tensor, Tensor]:
    """Times ``t [B]`` and per-sample factors multiplying $\\lambda(t)$ (1 unless importance sampled)."""
    if n_steps is not None:
        i = torch.randint(0, n_steps, (B,), generator=generator, device="cpu").to(opts["device"])
        return t_min + (sde.T - t_min) * i.to(opts["dtype"]) / max(n_steps - 1, 1), torch.ones(B, **opts)
    if not importance:
        return t_min + (sde.T - t_min) * torch.rand(B, generator=generator, **opts), torch.ones(B, **opts)
    t, inverse_density = log_snr_times(sde, t_min, torch.rand(B, generator=generator, dtype=torch.float64), **opts)
    return t, inverse_density / (sde.T - t_min)  # 1 / ((T - t_min) p(t)): the same expectation as uniform t


def dsm_loss(
    model: ScoreFn,
    sde: SDE,
    x0: Tensor,
    *,
    weighting: str = "sigma2",
    importance_sampling: bool = False,
    t_min: float | None = None,
    n_steps: int | None = None,
    reduce: str | None = None,
    generator: torch.Generator | None = None,
    y: Tensor | None = None,
    eps: float | None = None,
) -> Tensor:
    r"""Per-sample denoising score-matching loss ``[B]`` (see the module docstring for the equations).

    Args:
        model: a score function; a `ScoreModel` is used through its
            ``scaled_score`` (stable at small sigma).
        x0: data ``[B, ...]`` in the model's range.
        weighting: ``"sigma2"``, ``"likelihood"`` or ``"eps"``.
        importance_sampling: draw t uniformly in the log-SNR (``"likelihood"`` weighting only).
        t_min: smallest time (default ``sde.sampling_t_min``; ``eps`` is its deprecated name).
        n_steps: draw t from the N-step chain.
        reduce: ``"sum"`` over dimensions (default) or ``"mean"`` (default for ``"eps"``).
        y: class labels ``[B]`` of a class-conditional model (its null label for unconditional rows).
    """
    t_min = renamed_t_min(t_min, eps, "dsm_loss")
    check_sde(sde)
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 2:
        raise ValueError(
            "x0 must be a floating-point tensor [B, ...] with at least 2 dimensions, got "
            f"{getattr(x0, 'shape', type(x0).__name__)}"
        )
    check_callable("model", model)
    check_finite("x0", x0)
    check_in_registry("weighting", weighting, WEIGHTINGS)
    reduce = check_in_registry("reduction", reduce or ("mean" if weighting == "eps" else "sum"), REDUCTIONS, "reduce")
    if importance_sampling and (weighting != "likelihood" or n_steps is not None):
        raise ValueError("importance_sampling applies to the continuous 'likelihood' weighting only")
    if n_steps is not None:
        n_steps = check_positive_int("n_steps", n_steps)
    t_min = sde.check_t_min(t_min)
    B, opts = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
    t, factor = _draw_times(sde, t_min, B, importance_sampling, n_steps, generator, opts)
    sigma = sde.sigma(t)
    noise = standard_normal_like(x0, generator)
    xt = sde.perturb(x0, t, noise)
    residual = (sigma_score(sde, model, xt, t, y) + noise).reshape(B, -1).pow(2)
    residual = residual.sum(1) if reduce == "sum" else residual.mean(1)
    if weighting == "eps":
        return residual
    if weighting == "sigma2":
        return 0.5 * residual
    return 0.5 * factor * sde.g2(t) / sigma**2 * residual


def ddpm_loss(
    model: ScoreFn, sde: SDE, x0: Tensor, *, n_steps: int = 1000, generator: torch.Generator | None = None
) -> Tensor:
    r"""DDPM's $L_{simple}$ on the N-step chain: $\|\hat\epsilon(x_{t_i}, t_i) - \epsilon\|^2$, i uniform."""
    return dsm_loss(model, sde, x0, weighting="eps", n_steps=n_steps, generator=generator)


def smld_loss(
    model: ScoreFn, sde: SDE, x0: Tensor, *, n_steps: int = 1000, generator: torch.Generator | None = None
) -> Tensor:
    r"""SMLD / NCSN's loss on the N noise levels: $\tfrac12\sigma_i^2\|s_\theta(x, \sigma_i) + \epsilon/\sigma_i\|^2$,
    i uniform."""
    return dsm_loss(model, sde, x0, weighting="sigma2", n_steps=n_steps, generator=generator)


def classifier_loss(
    classifier,
    sde: SDE,
    x0: Tensor,
    y: Tensor,
    *,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    eps: float | None = None,
) -> Tensor:
    r"""Per-sample cross-entropy ``[B]`` of a noise-conditional classifier on perturbed data, t uniform on
    ``[t_min, T]``:
    $-\log p_\phi(y \mid \alpha(t)x_0 + \sigma(t)\epsilon,\ t)$ (Dhariwal & Nichol 2021; Song et al. 2021, App. I)."""
    t_min = renamed_t_min(t_min, eps, "classifier_loss")
    check_sde(sde)
    check_finite("x0", x0)
    t_min = sde.check_t_min(t_min)
    B, opts = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
    t, _ = _draw_times(sde, t_min, B, False, None, generator, opts)  # uniform on [t_min, T]
    xt = sde.perturb(x0, t, standard_normal_like(x0, generator))
    return torch.nn.functional.cross_entropy(classifier(xt, t), y.long(), reduction="none")


class VLBTimeSampler:
    r"""Importance sampling of the chain's bound terms over the steps (Improved DDPM's loss-second-moment
    resampler): step ``i`` is drawn with $p_i \propto \sqrt{\mathbb E[L_i^2]}$ over the last ``history`` values
    of each term, mixed with ``uniform`` of the uniform distribution, and uniformly until every step has
    ``history`` values; the loss is reweighted by $1/(N p_i)$, which keeps its expectation. The history is
    state (`state_dict`) that a checkpoint keeps, so a resumed run draws the same steps."""

    def __init__(self, n_steps: int, history: int = 10, uniform: float = 1e-3) -> None:
        self.n_steps, self.history, self.uniform = check_positive_int("n_steps", n_steps), history, uniform
        self.values = np.zeros((n_steps, history))
        self.counts = np.zeros(n_steps, dtype=np.int64)

    def probabilities(self) -> Tensor:
        """$p_i$ ``[N]`` (float64)."""
        if (self.counts < self.history).any():
            return torch.full((self.n_steps,), 1.0 / self.n_steps, dtype=torch.float64)
        w = np.sqrt(np.mean(self.values**2, axis=1))
        w = w / w.sum() * (1 - self.uniform) + self.uniform / self.n_steps
        return torch.from_numpy(w)

    def draw(self, batch: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Step indices ``[B]`` (0-based, on the CPU) and their weights $1/(N p_i)$ ``[B]`` (float64)."""
        p = self.probabilities()
        index = torch.multinomial(p, batch, replacement=True, generator=generator)
        return index, 1.0 / (self.n_steps * p[index])

    def update(self, index: Tensor, values: Tensor) -> None:
        """Append each drawn step's term value to its history (the oldest dropped once ``history`` are kept)."""
        for i, v in zip(index.cpu().tolist(), values.detach().double().cpu().tolist()):
            if self.counts[i] == self.history:
                self.values[i, :-1] = self.values[i, 1:]
                self.values[i, -1] = v
            else:
                self.values[i, self.counts[i]] = v
                self.counts[i] += 1

    def state_dict(self) -> dict[str, Tensor]:
        return {"values": torch.from_numpy(self.values.copy()), "counts": torch.from_numpy(self.counts.copy())}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        values, counts = state["values"].double().numpy(), state["counts"].long().numpy()
        if values.shape != self.values.shape or counts.shape != self.counts.shape:
            raise ValueError(
                f"the saved step history has shape {tuple(values.shape)}, this chain needs {self.values.shape}"
            )
        self.values, self.counts = values.copy(), counts.copy()


@dataclass
class HybridLoss:
    """Per-sample parts of `hybrid_loss`: ``loss [B]`` (what is minimised), ``simple [B]``, ``vlb [B]`` (the drawn
    step's bound term, bits/dim, detached) and ``index [B]`` (the drawn steps, for `VLBTimeSampler.update`)."""

    loss: Tensor
    simple: Tensor
    vlb: Tensor
    index: Tensor


def hybrid_loss(
    model,
    sde: SDE,
    x0: Tensor,
    *,
    n_steps: int = 1000,
    vlb_weight: float = 1e-3,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    y: Tensor | None = None,
    time_sampler: VLBTimeSampler | None = None,
) -> HybridLoss:
    r"""Improved DDPM's hybrid objective for a `scoresde.ScoreModel` with a learned variance, per sample:

    $$\ell = w_i\Big(\overline{\|\hat\epsilon - \epsilon\|^2} + \lambda N L_i\Big), \qquad
    L_i = \frac{1}{d\ln 2}\begin{cases}
    D_{KL}\big(\mathcal N(a x_0 + b x_i, \tilde\beta)\,\|\,
    \mathcal N(a\,\mathrm{sg}(\hat x_0) + b x_i, \Sigma_\theta)\big)
    & i > 0\\ -\log\mathcal N(x_0;\ a\,\mathrm{sg}(\hat x_0) + b x_i, \Sigma_\theta) & i = 0\end{cases}$$

    on the chain $t_i = t_{min} + (T - t_{min})\,i/(N - 1)$, ``i = 0..N-1``, stepping from $t_i$ to $t_{i-1}$
    ($t_{-1} = 0$, the data: the decoder); $a, b, \beta, \tilde\beta$ are the step's
    (`scoresde.processes.reverse_variance`),
    $\Sigma_\theta = \exp(f\log\beta + (1 - f)\log\tilde\beta)$ with the network's $f$ (the decoder's
    $\tilde\beta$ clipped to the next step's), $\mathrm{sg}$ the stop-gradient, $\lambda$ = ``vlb_weight``
    (Improved DDPM's 0.001) and $w_i = 1/(N p_i)$ with i drawn by ``time_sampler`` (uniform when ``None``: $w = 1$).
    """
    check_sde(sde)
    check_finite("x0", x0)
    n_steps = check_positive_int("n_steps", n_steps)
    if n_steps < 2:
        raise ValueError(f"the hybrid loss needs a chain of at least 2 steps, got n_steps={n_steps}")
    require(model, "hybrid_loss", output="score", variance=True)
    t_min = sde.check_t_min(t_min)
    B, opts = x0.shape[0], {"dtype": x0.dtype, "device": x0.device}
    if time_sampler is None:
        index = torch.randint(0, n_steps, (B,), generator=generator)
        weight = torch.ones(B, dtype=torch.float64)
    else:
        index, weight = time_sampler.draw(B, generator)
    index, weight = index.to(x0.device), weight.to(**opts)
    grid = t_min + (sde.T - t_min) * torch.arange(n_steps, **opts) / (n_steps - 1)
    t = grid[index]
    s = torch.where(index > 0, grid[(index - 1).clamp(min=0)], torch.zeros_like(t))
    decoder = index == 0
    step = chain_step(sde, t, s)
    first = chain_step(sde, grid[1].expand(B), grid[0].expand(B))  # the step into the decoder's start
    step = replace(step, beta_tilde=torch.where(decoder, first.beta_tilde, step.beta_tilde))
    noise = standard_normal_like(x0, generator)
    xt = sde.perturb(x0, t, noise)
    scaled, fraction = model.scaled_score_and_variance(xt, t, y)
    simple = (scaled + noise).reshape(B, -1).pow(2).mean(1)
    x0_hat = x0_from_sigma_score(sde, xt, t, scaled.detach())
    var = reverse_variance("learned", step, fraction=fraction)
    a, b, beta_tilde = (expand_to(c, xt) for c in (step.a, step.b, step.beta_tilde))
    mean_error = (a * (x0 - x0_hat)).pow(2)
    kl = 0.5 * (torch.log(var / beta_tilde) + beta_tilde / var - 1) + mean_error / (2 * var)
    nll = 0.5 * torch.log(2 * math.pi * var) + (x0 - a * x0_hat - b * xt).pow(2) / (2 * var)
    terms = torch.where(expand_to(decoder, xt), nll, kl).reshape(B, -1).mean(1) / math.log(2)
    loss = weight * (simple + vlb_weight * n_steps * terms)
    return HybridLoss(loss=loss, simple=simple.detach(), vlb=terms.detach(), index=index)
