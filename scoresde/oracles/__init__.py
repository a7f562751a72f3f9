"""Exact models: Gaussian mixtures (every marginal, score and log-density in closed form), uniform boxes, and the
linear-Gaussian autoencoder (a latent model's oracle).

They enter at the model seam like any network, so every sampler and likelihood is tested against them."""

from .gaussian_cascade import GaussianCascade, average_pool_matrix
from .gaussian_mixture import GaussianMixture, LabelledMixture, MixtureScore, entropy_by_quadrature, random_mixture
from .linear_gaussian import LinearGaussianAutoencoder
from .uniform_boxes import UniformBoxes

__all__ = [
    "GaussianMixture",
    "LabelledMixture",
    "MixtureScore",
    "entropy_by_quadrature",
    "random_mixture",
    "UniformBoxes",
    "LinearGaussianAutoencoder",
    "GaussianCascade",
    "average_pool_matrix",
]
