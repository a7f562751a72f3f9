"""scoresde: score-based generative modelling with stochastic differential equations.

The public API lives here; module layout behind it may change, these names may not.
"""

from .analytic import GaussianMixture, MixtureScore, entropy_by_quadrature
from .datasets import ToyDataset, register_toy, toy_dataset, toy_datasets
from .likelihood import BitsPerDimResult, DataTransform, ELBOResult, LikelihoodResult, bits_per_dim, ddpm_bound, elbo, log_likelihood
from .metrics import energy_distance, mmd, sliced_wasserstein
from .samplers import (
    SampleResult,
    correctors,
    predictors,
    register_corrector,
    register_predictor,
    register_sampler,
    sample,
    sampler_options,
    samplers,
    time_grid,
)
from .sde import SDE, ReverseSDE, ScoreFn, SubVPSDE, VESDE, VPSDE, evaluate_score

__version__ = "0.1.0"

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "ScoreFn",
    "evaluate_score",
    "GaussianMixture",
    "MixtureScore",
    "entropy_by_quadrature",
    "ToyDataset",
    "register_toy",
    "toy_dataset",
    "toy_datasets",
    "sample",
    "SampleResult",
    "samplers",
    "sampler_options",
    "predictors",
    "correctors",
    "register_sampler",
    "register_predictor",
    "register_corrector",
    "time_grid",
    "energy_distance",
    "mmd",
    "sliced_wasserstein",
    "log_likelihood",
    "LikelihoodResult",
    "bits_per_dim",
    "BitsPerDimResult",
    "DataTransform",
    "elbo",
    "ddpm_bound",
    "ELBOResult",
]
