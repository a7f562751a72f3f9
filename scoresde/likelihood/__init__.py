"""Likelihoods: the exact log-likelihood through the probability-flow ODE (torchdiffeq or the exponential
integrator), the variational bounds (continuous-time ELBO, the DDPM chain's bound) and bits/dim."""

from ..processes.divergence import DIVERGENCES, PROBES, divergence_fn, draw_probes, exact_divergence, probe_divergences
from .bounds import TIME_SAMPLINGS, ELBOResult, ddpm_bound, elbo
from .bpd import ESTIMATORS, BitsPerDimResult, bits_per_dim
from .cascade import CASCADE_TERMS, CascadeBoundResult, cascade_bits_per_dim
from .dequantization import (
    DEQUANTIZERS,
    Dequantized,
    Dequantizer,
    TruncatedNormalDequantizer,
    UniformDequantizer,
    dequantizer,
    register_dequantizer,
)
from .latent import LATENT_TERMS, LatentBoundResult, decoder_log_prob, latent_bits_per_dim
from .pf_ode import LIKELIHOOD_T_MIN, SOLVERS, check_data, likelihood_t_min, log_likelihood
from .result import LikelihoodResult, error_budget
from .sharded import chunk_generator, merge_bits_per_dim, sharded_bits_per_dim

__all__ = [
    "cascade_bits_per_dim",
    "CascadeBoundResult",
    "CASCADE_TERMS",
    "latent_bits_per_dim",
    "LatentBoundResult",
    "LATENT_TERMS",
    "decoder_log_prob",
    "log_likelihood",
    "LikelihoodResult",
    "bits_per_dim",
    "BitsPerDimResult",
    "DEQUANTIZERS",
    "Dequantized",
    "Dequantizer",
    "TruncatedNormalDequantizer",
    "UniformDequantizer",
    "dequantizer",
    "register_dequantizer",
    "sharded_bits_per_dim",
    "merge_bits_per_dim",
    "chunk_generator",
    "elbo",
    "ddpm_bound",
    "ELBOResult",
    "TIME_SAMPLINGS",
    "ESTIMATORS",
    "check_data",
    "error_budget",
    "likelihood_t_min",
    "LIKELIHOOD_T_MIN",
    "SOLVERS",
    "DIVERGENCES",
    "PROBES",
    "divergence_fn",
    "draw_probes",
    "exact_divergence",
    "probe_divergences",
]
