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

Since $\mathbb E\|\sigma s_\theta + \epsilon\|^2 = \sigma^2\mathbb E\|s_\theta - \nabla\log p_t\|^2
+ D - \sigma^2\mathbb E\|\nabla\log p_t\|^2$, the loss at the exact score is its irreducible minimum.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_finite, check_in_registry, check_positive_int, expand_to, renamed_t_min, standard_normal_like
from .sde import SDE, ScoreFn, check_sde, log_snr_times

__all__ = ["dsm_loss", "ddpm_loss", "smld_loss", "classifier_loss", "WEIGHTINGS", "REDUCTIONS"]

WEIGHTINGS = ("sigma2", "likelihood", "eps")
REDUCTIONS = ("sum", "mean")


def _scaled_score(model: ScoreFn, x: Tensor, t: Tensor, sigma: Tensor, y: Tensor | None = None) -> Tensor:
    """$\\sigma s_\\theta(x, t[, y])$: the model's own (``scaled_score``) when it has one, else by multiplication."""
    scaled = getattr(model, "scaled_score", None)
    if scaled is not None:
        return scaled(x, t) if y is None else scaled(x, t, y)
    return expand_to(sigma, x) * (model(x, t) if y is None else model(x, t, y))


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
    check_finite("x0", x0)
    check_in_registry("weighting", weighting, WEIGHTINGS)
    reduce = check_in_registry("reduction", reduce or ("mean" if weighting == "eps" else "sum"), REDUCTIONS)
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
    residual = (_scaled_score(model, xt, t, sigma, y) + noise).reshape(B, -1).pow(2)
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
