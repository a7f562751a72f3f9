r"""A second exact oracle: a mixture of uniform densities on axis-aligned boxes (the checkerboard).

If $p_0 = \sum_k w_k\,\mathcal U(B_k)$ with $B_k = \prod_d [l_{kd}, h_{kd}]$ and
$x_t = \alpha x_0 + \sigma\epsilon$, the Gaussian blur of a box factorises over dimensions:

$$p_t(x) = \sum_k w_k \prod_d f_{kd}(x_d), \qquad
f_{kd}(x_d) = \frac{\Phi(b_{kd}) - \Phi(a_{kd})}{\alpha\,(h_{kd} - l_{kd})}, \quad
b_{kd} = \frac{x_d - \alpha l_{kd}}{\sigma},\ a_{kd} = \frac{x_d - \alpha h_{kd}}{\sigma},$$

$$\nabla_{x_d}\log p_t(x) = \sum_k r_k(x)\,
\frac{\varphi(b_{kd}) - \varphi(a_{kd})}{\sigma\,(\Phi(b_{kd}) - \Phi(a_{kd}))},$$

$$r_k = \operatorname{softmax}_k\Big(\log w_k + \sum_d \log f_{kd}(x_d)\Big).$$

Numerics: $\log(\Phi(b) - \Phi(a))$ is taken from ``log_ndtr`` on the side of 0 where both tails are small (by
the symmetry $\Phi(b) - \Phi(a) = \Phi(-a) - \Phi(-b)$), and the ratios $\varphi/(\Phi(b) - \Phi(a))$ in the log
domain, so a point hundreds of $\sigma$ off the boxes keeps a finite, exact log-density and score. Unlike the Gaussian
mixture, $p_0$ has edges: its log-density is $-\infty$ off the boxes, so samples are scored under $p_0$ blurred by a
small $\sigma$ (`UniformBoxes.blurred_log_prob`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .._checks import check_finite, check_positive, check_positive_int, check_probability_vector
from ..processes.base import SDE, check_sde
from .gaussian_mixture import MixtureScore

__all__ = ["UniformBoxes"]


def log_normal_cdf_difference(b: Tensor, a: Tensor) -> Tensor:
    r"""$\log(\Phi(b) - \Phi(a))$ for $b > a$, accurate in both tails (elementwise)."""
    flip = a > 0  # both above 0: Phi(b) - Phi(a) = Phi(-a) - Phi(-b), two small lower tails
    hi, lo = torch.where(flip, -a, b), torch.where(flip, -b, a)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + torch.log(-torch.expm1(log_lo - log_hi))


def _log_normal_pdf(z: Tensor) -> Tensor:
    return -0.5 * z**2 - 0.5 * math.log(2 * math.pi)


class UniformBoxes:
    r"""Mixture $p(x) = \sum_k w_k\,\mathcal U(\prod_d [l_{kd}, h_{kd}])$ of uniform densities on boxes (module
    docstring).

    Args:
        weights: ``[K]``, positive, summing to 1.
        lows: ``[K, D]`` lower corners.
        highs: ``[K, D]`` upper corners, ``highs > lows``; boxes must not overlap (the entropy assumes it).

    Parameters are kept in float64 on the CPU; every method works in the dtype and on the device of ``x``.
    """

    def __init__(self, weights: Tensor | Sequence[float], lows: Tensor | Sequence, highs: Tensor | Sequence) -> None:
        weights, lows, highs = (
            check_finite(name, torch.as_tensor(v, dtype=torch.float64).detach().cpu())
            for name, v in (("weights", weights), ("lows", lows), ("highs", highs))
        )
        check_probability_vector("weights", weights)
        if lows.ndim != 2 or lows.shape != highs.shape or lows.shape[0] != weights.shape[0]:
            raise ValueError(
                f"lows and highs must both have shape [K, D] with K = {weights.shape[0]} (the weights), got "
                f"{tuple(lows.shape)} and {tuple(highs.shape)}"
            )
        if not bool((highs > lows).all()):
            raise ValueError("every box needs highs > lows in every dimension")
        self.weights, self.lows, self.highs = weights, lows, highs

    @property
    def K(self) -> int:
        """Number of boxes."""
        return self.weights.shape[0]

    @property
    def D(self) -> int:
        """Dimension."""
        return self.lows.shape[1]

    def __repr__(self) -> str:
        return f"UniformBoxes(K={self.K}, D={self.D})"

    def sample(self, n: int, generator: torch.Generator | None = None, *, dtype: torch.dtype | None = None) -> Tensor:
        r"""``n`` draws ``[n, D]``: $k \sim \text{Cat}(w)$, $x = l_k + (h_k - l_k) \odot u$, $u \sim \mathcal U[0, 1]^D$
        (float64 on the generator's device, then cast to ``dtype``)."""
        n = check_positive_int("n", n)
        device = generator.device if generator is not None else torch.device("cpu")
        k = torch.multinomial(self.weights.to(device), n, replacement=True, generator=generator)
        u = torch.rand(n, self.D, generator=generator, device=device, dtype=torch.float64)
        lows, highs = self.lows.to(device)[k], self.highs.to(device)[k]
        return (lows + (highs - lows) * u).to(dtype or torch.get_default_dtype())

    def log_prob(self, x: Tensor) -> Tensor:
        r"""$\log p_0(x)$ ``[B]``: $\log(w_k / |B_k|)$ inside box $k$, $-\infty$ off every box."""
        flat = self._flat(x)
        lows, highs = self.lows.to(flat), self.highs.to(flat)
        inside = ((flat[:, None] >= lows) & (flat[:, None] <= highs)).all(-1)  # [B, K]
        log_density = (torch.log(self.weights) - torch.log(self.highs - self.lows).sum(-1)).to(flat)
        return torch.where(inside, log_density, torch.full_like(log_density, -math.inf)).max(dim=1).values

    def entropy(self) -> float:
        r"""$H(p_0) = -\sum_k w_k \log(w_k / |B_k|)$ (non-overlapping boxes)."""
        volumes = torch.log(self.highs - self.lows).sum(-1)
        return float(-(self.weights * (torch.log(self.weights) - volumes)).sum())

    def _flat(self, x: Tensor) -> Tensor:
        check_finite("x", x)
        if not x.is_floating_point() or x.ndim < 1 or x[0].numel() != self.D:
            raise ValueError(f"x must be a float tensor [B, ...] with {self.D} values per sample, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.D)

    def _log_prob_and_score(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
        r"""$\log p$ ``[B]`` and $\nabla\log p$ ``[B, D]`` of the boxes scaled by ``alpha [B]`` and blurred by
        ``sigma [B]``."""
        lows, highs = self.lows.to(x), self.highs.to(x)
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        b = (x[:, None] - alpha * lows) / sigma  # [B, K, D]
        a = (x[:, None] - alpha * highs) / sigma
        log_mass = log_normal_cdf_difference(b, a)
        log_f = log_mass - torch.log(alpha * (highs - lows))
        logits = torch.log(self.weights).to(x) + log_f.sum(-1)  # [B, K]
        slope = (torch.exp(_log_normal_pdf(b) - log_mass) - torch.exp(_log_normal_pdf(a) - log_mass)) / sigma
        score = torch.einsum("bk,bkd->bd", torch.softmax(logits, dim=1), slope)
        return torch.logsumexp(logits, dim=1), score

    def blurred_log_prob(self, x: Tensor, sigma: float) -> Tensor:
        r"""$\log (p_0 * \mathcal N(0, \sigma^2 I))(x)$ ``[B]``: the data blurred by a small ``sigma`` (finite
        everywhere)."""
        flat = self._flat(x)
        ones = torch.ones(flat.shape[0], dtype=flat.dtype, device=flat.device)
        return self._log_prob_and_score(flat, ones, check_positive("sigma", sigma) * ones)[0]

    def marginal_log_prob(self, sde: SDE, x: Tensor, t: Tensor | float) -> Tensor:
        r"""$\log p_t(x)$ with a time per sample: ``x [B, ...]``, ``t [B]`` -> ``[B]``."""
        t = sde.check_time(t, x)
        return self._log_prob_and_score(self._flat(x), sde.alpha(t), sde.sigma(t))[0]

    def marginal_score(self, sde: SDE, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Exact score $\nabla_x \log p_t(x)$ with a time per sample, shaped like ``x``."""
        t = sde.check_time(t, x)
        return self._log_prob_and_score(self._flat(x), sde.alpha(t), sde.sigma(t))[1].reshape(x.shape)

    def score_fn(self, sde: SDE) -> MixtureScore:
        """The exact score of the SDE's marginals as a ``score_fn(x, t)``."""
        return MixtureScore(self, check_sde(sde))
