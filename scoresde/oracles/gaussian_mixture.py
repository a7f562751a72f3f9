r"""The exact oracle: a Gaussian mixture whose every SDE marginal, score and log-density is closed-form.

If $p_0 = \sum_k w_k \mathcal N(\mu_k, S_k)$ and $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$, then

$$p_t = \sum_k w_k\, \mathcal N\big(\alpha(t)\mu_k,\ C_k(t)\big), \qquad C_k(t) = \alpha(t)^2 S_k + \sigma(t)^2 I,$$

$$\nabla_x \log p_t(x) = -\sum_k r_k(x)\, C_k(t)^{-1}(x - \alpha(t)\mu_k),
\qquad r_k = \operatorname{softmax}_k\big(\log w_k + \log\mathcal N(x; \alpha\mu_k, C_k)\big).$$

Numerics: with the eigendecomposition $S_k = U_k \operatorname{diag}(\ell_k) U_k^\top$, every
$C_k(t) = U_k \operatorname{diag}(\alpha^2\ell_k + \sigma^2) U_k^\top$ is diagonal in the same basis,
so a batch with a different ``t`` per sample costs one projection instead of one factorisation per sample;
responsibilities use log-sum-exp, so points far in the tails keep a finite, exact score in any dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._checks import check_finite, check_labels, check_positive_int, check_probability_vector
from ..processes.base import SDE, check_sde
from ..processes.seam import ModelSpec

__all__ = ["random_mixture", "LabelledMixture", "GaussianMixture", "MixtureScore", "entropy_by_quadrature"]

_SYMMETRY_RTOL = 1e-8
"""Relative asymmetry tolerated in a covariance (round-off from building it as A @ A.T)."""


def _as_float64(name: str, value) -> Tensor:
    try:
        tensor = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise TypeError(f"{name} must be array-like of numbers: {exc}") from None
    return check_finite(name, tensor)


class GaussianMixture:
    r"""Mixture $p(x) = \sum_{k=1}^K w_k\,\mathcal N(x; \mu_k, S_k)$ in dimension ``D``.

    Args:
        weights: ``[K]``, positive, summing to 1.
        means: ``[K, D]``.
        covs: ``[K, D, D]`` symmetric positive definite (``[K, D]`` is read as diagonals).

    Parameters are kept in float64 on the CPU; every method works in the dtype and on the device of its
    input ``x`` (or of the ``dtype`` / ``device`` / ``generator`` it is given).
    """

    def __init__(self, weights: Tensor | Sequence[float], means: Tensor | Sequence, covs: Tensor | Sequence) -> None:
        weights = _as_float64("weights", weights)
        means = _as_float64("means", means)
        covs = _as_float64("covs", covs)
        check_probability_vector("weights", weights)
        K = weights.shape[0]
        if means.ndim != 2 or means.shape[0] != K:
            raise ValueError(
                f"means must have shape [K, D] with K = {K} (the number of weights), got {tuple(means.shape)}"
            )
        D = means.shape[1]
        if covs.shape == (K, D):
            covs = torch.diag_embed(covs)
        if covs.shape != (K, D, D):
            raise ValueError(
                f"covs must have shape [K, D, D] = [{K}, {D}, {D}] (or [K, D] diagonals), got {tuple(covs.shape)}"
            )
        asym = (covs - covs.transpose(-1, -2)).abs().amax(dim=(-1, -2))
        scale = covs.abs().amax(dim=(-1, -2))
        bad = (asym > _SYMMETRY_RTOL * scale).nonzero()
        if bad.numel():
            k = int(bad[0, 0])
            raise ValueError(f"covs[{k}] must be symmetric, got max |S - S^T| = {float(asym[k]):.3g}")
        chol, info = torch.linalg.cholesky_ex(covs)
        if bool((info != 0).any()):
            k = int((info != 0).nonzero()[0, 0])
            min_eig = float(torch.linalg.eigvalsh(covs[k]).min())
            raise ValueError(f"covs[{k}] must be positive definite, got smallest eigenvalue {min_eig:.3g}")
        self.weights, self.means, self.covs = weights, means, covs
        self._chol = chol
        self._eigvals, self._eigvecs = torch.linalg.eigh(covs)

    # ------------------------------------------------------------------ basic facts
    @property
    def K(self) -> int:
        """Number of components."""
        return self.weights.shape[0]

    @property
    def D(self) -> int:
        """Dimension of the data."""
        return self.means.shape[1]

    def mean(self) -> Tensor:
        r"""Mixture mean $\sum_k w_k \mu_k$, ``[D]`` (float64)."""
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        r"""Mixture covariance $\sum_k w_k (S_k + \mu_k\mu_k^\top) - m m^\top$, ``[D, D]`` (float64)."""
        m = self.mean()
        second = torch.einsum("k,kij->ij", self.weights, self.covs + self.means[:, :, None] * self.means[:, None, :])
        return second - torch.outer(m, m)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, D={self.D})"

    # ------------------------------------------------------------------ sampling and density
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        return_components: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        r"""Draw ``n`` samples ``[n, D]``: $k \sim \text{Cat}(w)$, $x = \mu_k + L_k z$, $S_k = L_k L_k^\top$.

        Random numbers are drawn in float64 on the generator's device, then cast to ``dtype``
        (default: torch's default dtype) and moved to ``device``. ``return_components``: also the component
        ``k [n]`` of each sample (the same draws: the samples do not change).
        """
        n = check_positive_int("n", n)
        gen_device = generator.device if generator is not None else torch.device("cpu")
        w = self.weights.to(gen_device)
        idx = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.D, generator=generator, device=gen_device, dtype=torch.float64)
        chol, means = self._chol.to(gen_device), self.means.to(gen_device)
        x = means[idx] + torch.einsum("nij,nj->ni", chol[idx], z)
        x = x.to(device=device or gen_device, dtype=dtype or torch.get_default_dtype())
        return (x, idx.to(x.device)) if return_components else x

    def _flat(self, x: Tensor) -> Tensor:
        check_finite("x", x)
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim < 1 or x[0].numel() != self.D:
            raise ValueError(f"x must have shape [B, ...] with {self.D} values per sample, got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.D)

    def _components(self, x: Tensor, alpha: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Per-component terms of $\sum_k w_k \mathcal N(\alpha\mu_k, \alpha^2 S_k + \sigma^2 I)$ at ``x [B, D]``:
        the logits $\log w_k + \log\mathcal N_k$ ``[B, K]``, eigen-coordinates ``[B, K, D]``, variances and
        eigenvectors."""
        opts = {"dtype": x.dtype, "device": x.device}
        U, ell, mu = self._eigvecs.to(**opts), self._eigvals.to(**opts), self.means.to(**opts)
        log_w = torch.log(self.weights).to(**opts)
        diff = x[:, None, :] - alpha[:, None, None] * mu[None]  # [B, K, D]
        y = torch.einsum("bkd,kde->bke", diff, U)  # coordinates in each component's eigenbasis
        var = alpha[:, None, None] ** 2 * ell[None] + (sigma**2)[:, None, None]  # eigenvalues of C_k(t)
        log_norm = -0.5 * ((y**2 / var).sum(-1) + torch.log(var).sum(-1) + self.D * math.log(2 * math.pi))
        return log_w + log_norm, y, var, U

    def _log_prob_and_score(
        self, x: Tensor, alpha: Tensor, sigma: Tensor, with_score: bool
    ) -> tuple[Tensor, Tensor | None]:
        r"""Log-density ``[B]`` and score ``[B, D]`` of $\sum_k w_k \mathcal N(\alpha\mu_k, \alpha^2 S_k + \sigma^2 I)$
        for per-sample ``alpha [B]``, ``sigma [B]`` and ``x [B, D]``."""
        logits, y, var, U = self._components(x, alpha, sigma)
        log_p = torch.logsumexp(logits, dim=1)
        if not with_score:
            return log_p, None
        resp = torch.softmax(logits, dim=1)
        component_score = -torch.einsum("bke,kde->bkd", y / var, U)
        return log_p, torch.einsum("bk,bkd->bd", resp, component_score)

    def log_prob(self, x: Tensor) -> Tensor:
        r"""$\log p(x) = \operatorname{logsumexp}_k [\log w_k + \log\mathcal N(x; \mu_k, S_k)]$, ``x [B, D] -> [B]``."""
        flat = self._flat(x)
        ones = torch.ones(flat.shape[0], dtype=x.dtype, device=x.device)
        return self._log_prob_and_score(flat, ones, torch.zeros_like(ones), with_score=False)[0]

    def score(self, x: Tensor) -> Tensor:
        r"""Data score $\nabla_x \log p(x)$, shaped like ``x``."""
        flat = self._flat(x)
        ones = torch.ones(flat.shape[0], dtype=x.dtype, device=x.device)
        return self._log_prob_and_score(flat, ones, torch.zeros_like(ones), with_score=True)[1].reshape(x.shape)

    def cell_log_prob(self, lower: Tensor, upper: Tensor) -> Tensor:
        r"""$\log P(\mathrm{cell}) = \log \sum_k w_k \prod_d [\Phi(\frac{u_d - \mu_{kd}}{s_{kd}}) -
        \Phi(\frac{l_d - \mu_{kd}}{s_{kd}})]$: the exact probability of each box ``[lower, upper) [B, D] -> [B]``
        (quantised data's law: the cells of a `scoresde.datasets.DataTransform`). Needs diagonal covariances (a
        box's probability under a correlated Gaussian has no closed form); a differences of CDFs is taken on the
        side of the mean where it does not cancel."""
        if bool((self.covs - torch.diag_embed(torch.diagonal(self.covs, dim1=-2, dim2=-1))).abs().amax() > 0):
            raise ValueError(
                "cell_log_prob needs diagonal covariances (boxes of a correlated Gaussian have no closed form)"
            )
        lower, upper = self._flat(lower.to(torch.float64)), self._flat(upper.to(torch.float64))
        scale = torch.diagonal(self.covs, dim1=-2, dim2=-1).sqrt()  # [K, D]
        a = (lower[:, None, :] - self.means) / scale  # [B, K, D]
        b = (upper[:, None, :] - self.means) / scale
        flip = a > 0  # both ends above the mean: 1 - Phi on the upper tail, Phi(-a) - Phi(-b), without cancellation
        a, b = torch.where(flip, -b, a), torch.where(flip, -a, b)
        log_mass = torch.special.log_ndtr(b) + torch.log1p(
            -torch.exp(torch.special.log_ndtr(a) - torch.special.log_ndtr(b))
        )
        return torch.logsumexp(torch.log(self.weights) + log_mass.sum(-1), dim=1)

    # ------------------------------------------------------------------ SDE marginals
    def marginal(self, sde: SDE, t: float | Tensor) -> GaussianMixture:
        r"""The mixture $p_t = \sum_k w_k \mathcal N(\alpha(t)\mu_k, \alpha(t)^2 S_k + \sigma(t)^2 I)$ at one time
        ``t``."""
        t = sde.check_time(torch.as_tensor(t, dtype=torch.float64))
        if t.numel() != 1:
            raise ValueError(
                f"t must be a single time for marginal(); got shape {tuple(t.shape)} (use marginal_log_prob for a "
                "batch)"
            )
        alpha, sigma = float(sde.alpha(t.reshape(()))), float(sde.sigma(t.reshape(())))
        covs = alpha**2 * self.covs + sigma**2 * torch.eye(self.D, dtype=torch.float64)
        return GaussianMixture(self.weights, alpha * self.means, covs)

    def _alpha_sigma(self, sde: SDE, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        t = sde.check_time(t, x)
        return sde.alpha(t), sde.sigma(t)

    def marginal_log_prob(self, sde: SDE, x: Tensor, t: Tensor | float) -> Tensor:
        r"""$\log p_t(x)$ with a time per sample: ``x [B, ...]``, ``t [B]`` -> ``[B]``. Differentiable in x and t."""
        flat = self._flat(x)
        alpha, sigma = self._alpha_sigma(sde, x, t)
        return self._log_prob_and_score(flat, alpha, sigma, with_score=False)[0]

    def marginal_score(self, sde: SDE, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Exact score $\nabla_x \log p_t(x)$ with a time per sample, shaped like ``x``."""
        flat = self._flat(x)
        alpha, sigma = self._alpha_sigma(sde, x, t)
        return self._log_prob_and_score(flat, alpha, sigma, with_score=True)[1].reshape(x.shape)

    def flow_map(self, sde: SDE, x: Tensor, t: Tensor | float, s: Tensor | float) -> Tensor:
        r"""The exact probability-flow map from ``t`` to ``s`` (``[B]`` each, or one number) of one Gaussian
        $\mathcal N(\mu, \Sigma = U\Lambda U^\top)$: in $y = x/\alpha$ with $\tilde\sigma = \sigma/\alpha$ the
        marginal is $\mathcal N(\mu, \Sigma + \tilde\sigma^2 I)$ and the ODE $dy/d\tilde\sigma = \tilde\sigma(\Sigma +
        \tilde\sigma^2 I)^{-1}(y - \mu)$ is solved per eigen-direction,
        $$\Phi(x, t, s) = \alpha_s\big[\mu + U\,\mathrm{diag}\big(\sqrt{(\lambda_i + \tilde\sigma_s^2)/(\lambda_i +
        \tilde\sigma_t^2)}\big)\,U^\top(x/\alpha_t - \mu)\big]$$
        (affine in ``x``; float64). A mixture of several components has no closed-form map: solve its
        probability-flow ODE with `marginal_score` (`scoresde.sample` with ``x_T``)."""
        if self.K != 1:
            raise ValueError(
                f"the closed-form flow map is that of one Gaussian; this mixture has {self.K} components: solve its "
                f"probability-flow ODE (scoresde.sample(sde, mixture.score_fn(sde), ..., x_T=x, sampler='ode'))"
            )
        flat = self._flat(x).to(torch.float64)
        t, s = (sde.check_time(torch.as_tensor(v, dtype=torch.float64), flat) for v in (t, s))
        alpha_t, alpha_s = sde.alpha(t).expand(flat.shape[0]), sde.alpha(s).expand(flat.shape[0])
        level_t, level_s = sde.sigma(t) / sde.alpha(t), sde.sigma(s) / sde.alpha(s)
        eigenvalues, U = torch.linalg.eigh(self.covs[0])
        ratio = torch.sqrt((eigenvalues + level_s.reshape(-1, 1) ** 2) / (eigenvalues + level_t.reshape(-1, 1) ** 2))
        z = ((flat / alpha_t[:, None] - self.means[0]) @ U) * ratio
        return (alpha_s[:, None] * (self.means[0] + z @ U.T)).reshape(x.shape)

    def class_log_probs(self, sde: SDE, x: Tensor, t: Tensor | float, labels: Sequence[int]) -> Tensor:
        r"""Exact class posteriors $\log p(y = c \mid x_t)$ ``[B, C]`` when component ``k`` has class ``labels[k]``:
        $\operatorname{logsumexp}_{k: y_k = c}(\log w_k + \log\mathcal N_k(x_t)) - \log p_t(x_t)$ (a noise-conditional
        classifier that makes no error)."""
        labels = self._check_labels(labels)
        flat = self._flat(x)
        alpha, sigma = self._alpha_sigma(sde, x, t)
        logits = self._components(flat, alpha, sigma)[0]
        classes = int(labels.max()) + 1
        per_class = torch.stack([torch.logsumexp(logits[:, labels == c], dim=1) for c in range(classes)], dim=1)
        return per_class - torch.logsumexp(logits, dim=1, keepdim=True)

    def _check_labels(self, labels: Sequence[int]) -> Tensor:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if labels.shape != (self.K,) or bool((labels < 0).any()):
            raise ValueError(f"labels must give one class >= 0 per component ({self.K}), got {labels.tolist()}")
        missing = sorted(set(range(int(labels.max()) + 1)) - set(labels.tolist()))
        if missing:
            raise ValueError(f"classes {missing} have no component; number the classes 0..C-1")
        return labels

    def restrict(self, components: Sequence[int]) -> GaussianMixture:
        r"""The mixture of the given components with renormalised weights: $p(x \mid k \in \text{components})$,
        e.g. the class-conditional density when the components are a class."""
        idx = torch.as_tensor(list(components), dtype=torch.long)
        if idx.numel() == 0 or bool(((idx < 0) | (idx >= self.K)).any()):
            raise ValueError(
                f"components must be a non-empty list of indices in 0..{self.K - 1}, got {list(components)}"
            )
        w = self.weights[idx]
        return GaussianMixture(w / w.sum(), self.means[idx], self.covs[idx])

    def condition(self, known: Sequence[int], values: Tensor | Sequence[float]) -> GaussianMixture:
        r"""The exact conditional $p(x_u \mid x_k = v)$ of the unknown coordinates ``u`` given ``values`` ``v`` of the
        ``known`` ones: per component
        $\mathcal N(\mu_u + S_{uk}S_{kk}^{-1}(v - \mu_k),\ S_{uu} - S_{uk}S_{kk}^{-1}S_{ku})$,
        weights $\propto w_k\,\mathcal N(v; \mu_k, S_{kk})$ (the ground truth of inpainting)."""
        k = torch.as_tensor(list(known), dtype=torch.long)
        if (
            k.numel() == 0
            or k.numel() >= self.D
            or len(set(k.tolist())) != k.numel()
            or bool(((k < 0) | (k >= self.D)).any())
        ):
            raise ValueError(
                f"known must list distinct coordinates in 0..{self.D - 1}, leaving at least one unknown; got "
                f"{list(known)}"
            )
        v = _as_float64("values", values).reshape(-1)
        if v.numel() != k.numel():
            raise ValueError(f"values must hold one number per known coordinate ({k.numel()}), got {v.numel()}")
        u = torch.tensor([i for i in range(self.D) if i not in set(k.tolist())], dtype=torch.long)
        S_kk, S_uk, S_uu = self.covs[:, k][:, :, k], self.covs[:, u][:, :, k], self.covs[:, u][:, :, u]
        gain = S_uk @ torch.linalg.inv(S_kk)  # [K, u, k]
        diff = v[None] - self.means[:, k]
        means = self.means[:, u] + torch.einsum("kuj,kj->ku", gain, diff)
        covs = S_uu - gain @ S_uk.transpose(1, 2)
        evidence = GaussianMixture(self.weights, self.means[:, k], S_kk)
        one = torch.ones(1, dtype=torch.float64)
        logits = evidence._components(v[None], one, 0 * one)[0][0]  # log w_k + log N(v; mu_k, S_kk)
        return GaussianMixture(torch.softmax(logits, dim=0), means, 0.5 * (covs + covs.transpose(1, 2)))

    def score_fn(self, sde: SDE) -> MixtureScore:
        """The exact score of the SDE's marginals as a ``score_fn(x, t)`` (the package's score protocol)."""
        return MixtureScore(self, check_sde(sde))

    # ------------------------------------------------------------------ entropy
    def entropy(self, points_per_dim: int | None = None) -> float:
        r"""Differential entropy $H = -\int p \log p\,dx$ in nats, by quadrature (D = 1 or 2).

        The integrand is smooth and decays like a Gaussian, so the rectangle rule on a box reaching 12
        standard deviations past every component converges spectrally; the default grid spacing is a
        quarter of the narrowest component's smallest standard deviation.
        """
        if self.D > 2:
            raise ValueError(
                f"entropy() integrates on a grid and supports D <= 2, got D = {self.D}; estimate it by Monte Carlo"
            )
        spread = 12 * torch.sqrt(self._eigvals.max())
        lo = (self.means.min(dim=0).values - spread).tolist()
        hi = (self.means.max(dim=0).values + spread).tolist()
        if points_per_dim is None:
            h = 0.25 * float(torch.sqrt(self._eigvals.min()))
            points_per_dim = int(min(4000, max(200, math.ceil(max(b - a for a, b in zip(lo, hi)) / h))))
        return entropy_by_quadrature(self.log_prob, lo, hi, points_per_dim)


class MixtureScore:
    """``score_fn(x, t)`` returning the exact $\\nabla_x\\log p_t(x)$ of a `GaussianMixture` under an SDE."""

    def __init__(self, mixture: GaussianMixture, sde: SDE) -> None:
        self.mixture = mixture
        self.sde = sde

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.mixture.marginal_score(self.sde, x, t)

    def __repr__(self) -> str:
        return f"MixtureScore({self.mixture!r}, {self.sde!r})"


class LabelledMixture:
    r"""A `GaussianMixture` whose components carry class labels, under an SDE: the exact class-conditional score
    and the exact noise-conditional classifier, the ground truth of guidance.

    - ``score(x, t, y)``: $\nabla_x \log p_t(x \mid y)$ (the score of the class's sub-mixture); ``y = None`` or the
      null label ``num_classes``: the unconditional $\nabla_x \log p_t(x)$. It has the protocol of a
      class-conditional model (``num_classes``, labels ``[B]``), so guidance wrappers take it as they take a network.
    - ``classifier(x, t)``: logits $\log p(y = c \mid x_t)$ ``[B, C]``.
    """

    def __init__(self, mixture: GaussianMixture, sde: SDE, labels: Sequence[int]) -> None:
        self.mixture, self.sde = mixture, check_sde(sde)
        self.labels = mixture._check_labels(labels)
        self.num_classes = int(self.labels.max()) + 1
        self.spec = ModelSpec(num_classes=self.num_classes)  # the seam's declaration: a class-conditional score
        self.classes = [
            mixture.restrict(torch.nonzero(self.labels == c).flatten().tolist()) for c in range(self.num_classes)
        ]

    def __call__(self, x: Tensor, t: Tensor, y: Tensor | int | None = None) -> Tensor:
        if y is None:
            return self.mixture.marginal_score(self.sde, x, t)
        y = check_labels(y, x.shape[0], self.num_classes, x.device, allow_null=True)
        out = torch.empty_like(x)
        for c in y.unique().tolist():
            rows = y == c
            part = self.mixture if c == self.num_classes else self.classes[c]
            out[rows] = part.marginal_score(self.sde, x[rows], t[rows])
        return out

    def classifier(self, x: Tensor, t: Tensor) -> Tensor:
        r"""Exact logits $\log p(y = c \mid x_t)$ ``[B, C]``."""
        return self.mixture.class_log_probs(self.sde, x, t, self.labels)


def random_mixture(dim: int = 10, components: int = 4, seed: int = 0) -> GaussianMixture:
    r"""A reproducible mixture in ``dim`` dimensions for tests and benchmarks: from a generator seeded with
    ``seed``, $A_k \sim \mathcal N(0, 1/d)^{d\times d}$ and $\Sigma_k = 0.3\,A_k A_k^\top + 0.02\,I$ (well
    conditioned, anisotropic), weights $u_k + 0.2$ normalised ($u_k \sim U(0, 1)$), means $\mathcal N(0, I)$."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(components, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    covs = 0.3 * a @ a.transpose(-1, -2) + 0.02 * torch.eye(dim, dtype=torch.float64)
    w = torch.rand(components, generator=g, dtype=torch.float64) + 0.2
    return GaussianMixture(w / w.sum(), torch.randn(components, dim, generator=g, dtype=torch.float64), covs)


def grid_cells(lo: Sequence[float], hi: Sequence[float], points_per_dim: int) -> tuple[Tensor, float]:
    """Midpoints ``[M, D]`` of a regular grid of cells on the box ``[lo, hi]`` (float64) and the cell volume."""
    axes = [torch.linspace(a, b, points_per_dim + 1, dtype=torch.float64) for a, b in zip(lo, hi)]
    mids = [0.5 * (ax[1:] + ax[:-1]) for ax in axes]
    cell = math.prod((b - a) / points_per_dim for a, b in zip(lo, hi))
    return torch.cartesian_prod(*mids).reshape(-1, len(mids)), cell


def entropy_by_quadrature(
    log_prob: Callable[[Tensor], Tensor],
    lo: Sequence[float],
    hi: Sequence[float],
    points_per_dim: int,
    chunk: int = 1 << 18,
) -> float:
    r"""$H = -\int_{box} p(x)\log p(x)\,dx$ by the midpoint rule on a regular grid (float64).

    Cells where $p = 0$ contribute 0 (the limit of $p\log p$).
    """
    cells, volume = grid_cells(lo, hi, points_per_dim)
    total = torch.zeros((), dtype=torch.float64)
    for part in cells.split(chunk):
        logp = log_prob(part)
        p = torch.exp(logp)
        total = total + torch.where(p > 0, p * logp, torch.zeros_like(p)).sum()
    return float(-total * volume)
