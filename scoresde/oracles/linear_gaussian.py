r"""A linear-Gaussian autoencoder of Gaussian data: the latent-model oracle, where everything is a Gaussian formula.

Data $x \sim \mathcal N(0, \Sigma)$ in ``D`` dimensions, $\Sigma = U \operatorname{diag}(\lambda) U^\top$ with
$\lambda_1 \ge \dots \ge \lambda_D$; $W = U_{:, :k}$ the top-``k`` eigenvectors. The encoder
$q(z \mid x) = \mathcal N(W^\top x, s_e^2 I_k)$, the decoder $p(x \mid z) = \mathcal N(W z, s_d^2 I_D)$. Then

- the latents (the aggregate posterior) are $q(z) = \mathcal N(0, \Lambda_k + s_e^2 I)$, $\Lambda_k =
  \operatorname{diag}(\lambda_{1..k})$: a one-component `GaussianMixture`, so their marginals, score and log-density
  under any SDE are the mixture oracle's;
- a latent law $\mathcal N(m, S)$ decodes to $\mathcal N(W m, W S W^\top + s_d^2 I)$ (`decoded`);
- the latent likelihood bound (LSGM's, per data point; its expectation over the data in `bound_terms`)
  $B(x) = \mathbb E_{q(z|x)}[-\log p(z) + \log q(z \mid x) - \log p(x \mid z)] \ge -\log p(x)$, with
  $p(z)$ the latent model (the exact $q(z)$ when the latent score is exact).

With the decoder noise and the discarded eigenvalues equal, $\lambda_{i>k} = s_e^2 = s_d^2 = s^2$ (probabilistic
PCA), the expected bound exceeds the data's entropy by $\tfrac12\sum_{i\le k}\log(1 + s^2/\lambda_i)$, which vanishes
with $s$.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_positive
from .gaussian_mixture import GaussianMixture

__all__ = ["LinearGaussianAutoencoder"]


class LinearGaussianAutoencoder:
    r"""The linear-Gaussian autoencoder of $\mathcal N(0, \Sigma)$ data (module docstring): ``k`` latent dimensions,
    encoder noise ``encoder_std`` $= s_e$, decoder noise ``decoder_std`` $= s_d$. Parameters in float64. As a codec
    (`scoresde.likelihood.latent_bits_per_dim`) it computes in any dtype and has no scaling factor."""

    dtype: torch.dtype | None = None
    scaling_factor: float | None = None

    def __init__(self, covariance: Tensor, k: int, encoder_std: float, decoder_std: float) -> None:
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        if covariance.ndim != 2 or covariance.shape[0] != covariance.shape[1]:
            raise ValueError(f"covariance must be a square matrix [D, D], got shape {tuple(covariance.shape)}")
        self.data = GaussianMixture([1.0], torch.zeros(1, covariance.shape[0], dtype=torch.float64), covariance[None])
        D = self.data.D
        if not isinstance(k, int) or not 1 <= k <= D:
            raise ValueError(f"k must be an integer in [1, {D}] (the latent dimensions), got {k!r}")
        self.k = k
        self.encoder_std = check_positive("encoder_std", encoder_std)
        self.decoder_std = check_positive("decoder_std", decoder_std)
        eigenvalues, eigenvectors = torch.linalg.eigh(self.data.covs[0])
        order = eigenvalues.argsort(descending=True)
        self.eigenvalues, self.W = eigenvalues[order], eigenvectors[:, order[:k]]
        self.latent = GaussianMixture([1.0], torch.zeros(1, k, dtype=torch.float64),
                                      (self.eigenvalues[:k] + self.encoder_std**2)[None])  # fmt: skip

    @property
    def D(self) -> int:
        """Data dimensions."""
        return self.data.D

    def __repr__(self) -> str:
        return (
            f"LinearGaussianAutoencoder(D={self.D}, k={self.k}, encoder_std={self.encoder_std:g}, "
            f"decoder_std={self.decoder_std:g})"
        )

    # ------------------------------------------------------------------ the two maps
    def encode(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws $z = W^\top x + s_e\epsilon$ of $q(z \mid x)$, ``[B, k]`` for ``x`` ``[B, D]``."""
        noise = torch.randn(x.shape[0], self.k, generator=generator, dtype=torch.float64).to(x)
        return x @ self.W.to(x) + self.encoder_std * noise

    def decode(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        r"""Draws $x = W z + s_d\epsilon$ of $p(x \mid z)$, ``[B, D]`` for ``z`` ``[B, k]``."""
        noise = torch.randn(z.shape[0], self.D, generator=generator, dtype=torch.float64).to(z)
        return z @ self.W.T.to(z) + self.decoder_std * noise

    @property
    def latent_shape(self) -> tuple[int]:
        """The shape of one latent, ``(k,)``."""
        return (self.k,)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""$(W^\top x, s_e)$: the encoder's Gaussian, mean ``[B, k]`` and standard deviation broadcast to it (the
        autoencoder interface of `scoresde.models.LatentCodec`)."""
        mean = x @ self.W.to(x)
        return mean, torch.full_like(mean, self.encoder_std)

    def decoder_distribution(self, z: Tensor) -> tuple[Tensor, Tensor]:
        r"""$(W z, s_d)$: the decoder's Gaussian, mean ``[B, D]`` and standard deviation broadcast to it."""
        mean = z @ self.W.T.to(z)
        return mean, torch.full_like(mean, self.decoder_std)

    def encoder_log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        r"""$\log q(z \mid x)$, ``[B]``."""
        return _isotropic_log_prob(z - x @ self.W.to(x), self.encoder_std)

    def decoder_log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        r"""$\log p(x \mid z)$, ``[B]``."""
        return _isotropic_log_prob(x - z @ self.W.T.to(z), self.decoder_std)

    def decoded(self, latent: GaussianMixture) -> GaussianMixture:
        r"""The law of $W z + s_d\epsilon$ for $z$ of the mixture ``latent``: each component $\mathcal N(m, S)$
        becomes $\mathcal N(W m, W S W^\top + s_d^2 I)$ (the decoded samples of a latent model)."""
        if latent.D != self.k:
            raise ValueError(f"latent must have dimension k = {self.k}, got {latent.D}")
        covs = self.W @ latent.covs @ self.W.T + self.decoder_std**2 * torch.eye(self.D, dtype=torch.float64)
        return GaussianMixture(latent.weights, latent.means @ self.W.T, covs)

    # ------------------------------------------------------------------ the bound
    def bound_terms(self, prior: GaussianMixture | None = None) -> dict[str, float]:
        r"""The expected latent bound over the data, in nats, term by term (closed form; ``prior`` the latent
        model $p(z)$, a one-component mixture, default the exact latents $q(z)$):

        - ``prior``: $\mathbb E[-\log p(z)]$, the cross-entropy of $q(z) = \mathcal N(0, P_q)$ under
          $p(z) = \mathcal N(m, P)$: $\tfrac12[k\log 2\pi + \log\det P + \operatorname{tr}(P^{-1}P_q) + m^\top
          P^{-1}m]$;
        - ``encoder``: $\mathbb E[\log q(z \mid x)] = -\tfrac k2\log(2\pi e s_e^2)$;
        - ``reconstruction``: $\mathbb E[-\log p(x \mid z)] = \tfrac D2\log(2\pi s_d^2) + (\sum_{i>k}\lambda_i +
          k s_e^2) / (2 s_d^2)$;
        - ``bound``, their sum; ``data_entropy``, $-\mathbb E\log p(x) = \tfrac D2\log(2\pi e) +
          \tfrac12\sum_i\log\lambda_i$, which it bounds when ``prior`` is exact.
        """
        prior = prior if prior is not None else self.latent
        if prior.K != 1 or prior.D != self.k:
            raise ValueError(f"prior must be one Gaussian in k = {self.k} dimensions, got {prior!r}")
        P, m, Pq = prior.covs[0], prior.means[0], self.latent.covs[0]
        solve = torch.linalg.solve(P, torch.cat([Pq, m[:, None]], dim=1))
        cross = 0.5 * (self.k * math.log(2 * math.pi) + torch.logdet(P) + torch.trace(solve[:, :-1]) + m @ solve[:, -1])
        encoder = -0.5 * self.k * math.log(2 * math.pi * math.e * self.encoder_std**2)
        s2 = self.decoder_std**2
        residual = float(self.eigenvalues[self.k :].sum()) + self.k * self.encoder_std**2
        reconstruction = 0.5 * self.D * math.log(2 * math.pi * s2) + residual / (2 * s2)
        entropy = 0.5 * self.D * math.log(2 * math.pi * math.e) + 0.5 * float(self.eigenvalues.log().sum())
        terms = {"prior": float(cross), "encoder": encoder, "reconstruction": reconstruction}
        return {**terms, "bound": sum(terms.values()), "data_entropy": entropy}


def _isotropic_log_prob(residual: Tensor, std: float) -> Tensor:
    r"""$\log\mathcal N(r; 0, s^2 I)$ of each row of ``residual``."""
    d = residual.shape[-1]
    return -0.5 * (residual**2).sum(-1) / std**2 - 0.5 * d * math.log(2 * math.pi * std**2)
