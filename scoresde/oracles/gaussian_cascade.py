r"""A cascade of Gaussian images: the oracle of a two-stage (base + super-resolution) sampler.

Images $x \sim \mathcal N(0, \Sigma)$ of ``size`` x ``size`` pixels (one channel, flattened to ``D``); the
low-resolution image is the average over ``factor`` x ``factor`` blocks, $x_{low} = A x$; conditioning augmentation adds
$s\,\epsilon$. Everything is Gaussian:

- the base stage's data $x_{low} \sim \mathcal N(0, A\Sigma A^\top)$ (`low`, a one-component mixture: its score
  under any SDE is the mixture oracle's);
- given the augmented $\tilde x_{low} = A x + s\epsilon$, $x \mid \tilde x_{low} \sim \mathcal N(K\tilde x_{low},
  \Sigma - K A\Sigma)$ with $K = \Sigma A^\top(A\Sigma A^\top + s^2 I)^{-1}$, so the super-resolution stage's score at
  time $t$ is $-(\alpha^2 C + \sigma^2 I)^{-1}(x - \alpha K\tilde x_{low})$ (`super_resolution`);
- the two-stage sampler with these exact scores reproduces the joint law of $(x, A x)$ at $s = 0$ and the law of
  $x$ at every $s$.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import expand_to
from ..processes.base import SDE
from ..processes.seam import ModelSpec
from .gaussian_mixture import GaussianMixture

__all__ = ["GaussianCascade", "average_pool_matrix"]


def average_pool_matrix(size: int, factor: int) -> Tensor:
    """$A$ ``[(size/factor)^2, size^2]``: the block average of a flattened ``size`` x ``size`` image (row-major)."""
    if factor < 1 or size % factor:
        raise ValueError(f"factor {factor} must divide the image size {size}")
    low = size // factor
    A = torch.zeros(low * low, size * size, dtype=torch.float64)
    for i in range(size):
        for j in range(size):
            A[(i // factor) * low + j // factor, i * size + j] = 1.0 / factor**2
    return A


class GaussianCascade:
    r"""Gaussian ``size`` x ``size`` images with covariance ``covariance`` ``[D, D]`` and their ``factor``-times
    smaller block averages (module docstring)."""

    def __init__(self, covariance: Tensor, size: int, factor: int) -> None:
        covariance = torch.as_tensor(covariance, dtype=torch.float64)
        if covariance.shape != (size * size, size * size):
            raise ValueError(f"covariance must be [{size * size}, {size * size}] for {size}x{size} images")
        self.size, self.factor, self.covariance = size, factor, covariance
        self.A = average_pool_matrix(size, factor)
        self.low_size = size // factor
        self.data = GaussianMixture([1.0], torch.zeros(1, size * size, dtype=torch.float64), covariance[None])
        low_cov = self.A @ covariance @ self.A.T
        self.low = GaussianMixture([1.0], torch.zeros(1, self.A.shape[0], dtype=torch.float64), low_cov[None])

    def image(self, flat: Tensor, size: int | None = None) -> Tensor:
        """Flattened rows ``[B, s^2]`` as images ``[B, 1, s, s]``."""
        size = size or int(round(flat.shape[-1] ** 0.5))
        return flat.reshape(flat.shape[0], 1, size, size)

    def conditional(self, level: float) -> tuple[Tensor, Tensor]:
        r"""$(K, C)$ of $x \mid \tilde x_{low}$ at augmentation level $s$ = ``level``: mean $K\tilde x_{low}$,
        covariance $C$."""
        S, A = self.covariance, self.A
        K = torch.linalg.solve(A @ S @ A.T + level**2 * torch.eye(A.shape[0], dtype=torch.float64), A @ S).T
        return K, S - K @ A @ S

    def joint_covariance(self) -> Tensor:
        r"""The covariance ``[D + d, D + d]`` of $(x, A x)$ (zero mean, singular):
        $\begin{pmatrix}\Sigma & \Sigma A^\top\\ A\Sigma & A\Sigma A^\top\end{pmatrix}$."""
        S, A = self.covariance, self.A
        return torch.cat([torch.cat([S, S @ A.T], 1), torch.cat([A @ S, A @ S @ A.T], 1)], 0)

    def super_resolution(self, sde: SDE) -> _SuperResolutionOracle:
        """The exact super-resolution stage under ``sde``: a model declaring ``condition``, whose
        ``given(low, level)`` is the exact conditional score of images ``[B, 1, size, size]``."""
        return _SuperResolutionOracle(self, sde)


class _SuperResolutionOracle:
    spec = ModelSpec(condition=True)

    def __init__(self, cascade: GaussianCascade, sde: SDE) -> None:
        self.cascade, self.sde = cascade, sde

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        raise ValueError("the super-resolution oracle needs its condition: given(low, level)")

    def given(self, low: Tensor, level: Tensor | float) -> _ConditionalScore:
        level = float(torch.as_tensor(level).reshape(-1)[0])
        K, C = self.cascade.conditional(level)
        mean = low.reshape(low.shape[0], -1).to(torch.float64) @ K.T.to(low.device)
        return _ConditionalScore(self.sde, mean, C.to(low.device), self.cascade.size)


class _ConditionalScore:
    """The exact score of $p_t(x \\mid \\tilde x_{low})$ for each row's conditional mean."""

    def __init__(self, sde: SDE, mean: Tensor, C: Tensor, size: int) -> None:
        self.sde, self.mean, self.C, self.size = sde, mean, C, size

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        alpha, sigma = self.sde.alpha(t).to(torch.float64), self.sde.sigma(t).to(torch.float64)
        residual = flat - expand_to(alpha, flat) * self.mean
        eye = torch.eye(flat.shape[1], dtype=torch.float64, device=x.device)
        if bool((t == t[0]).all()):  # one time for the batch (the samplers' case): one factorisation
            cov = alpha[0] ** 2 * self.C + sigma[0] ** 2 * eye
            score = -torch.cholesky_solve(residual.T, torch.linalg.cholesky(cov)).T
        else:
            cov = alpha[:, None, None] ** 2 * self.C + sigma[:, None, None] ** 2 * eye
            score = -torch.linalg.solve(cov, residual.unsqueeze(-1)).squeeze(-1)
        return score.to(x.dtype).reshape(x.shape)
