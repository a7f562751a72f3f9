"""Forward processes: the SDE families (VP, cosine VP, sub-VP, VE, discrete VP), reverse SDE and probability flow,
time grids, the discrete chain and its reverse variances, divergences, and the model seam's declaration.

Imports only the private helpers: everything above builds on it."""

from . import vp  # noqa: F401  (registered first: the registry lists vp, vp-cosine, subvp, then ve)
from .base import SDE, check_sde, create_sde, log_snr_times, register_sde, sde_names
from .divergence import DIVERGENCES, PROBES, divergence_fn, draw_probes, exact_divergence, probe_divergences
from .grids import GRIDS, time_grid
from .reverse import VARIABLES, ProbabilityFlow, ReverseSDE
from .reverse_variance import VARIANCES, ScoreMoments, reverse_variance, score_moments
from .score import ScoreFn, evaluate_score
from .seam import CountingScore
from .ve import VESDE
from .vp import VPSDE, DiscreteVPSDE, SubVPSDE

__all__ = [
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "DiscreteVPSDE",
    "ReverseSDE",
    "ProbabilityFlow",
    "ScoreFn",
    "VARIABLES",
    "check_sde",
    "create_sde",
    "evaluate_score",
    "log_snr_times",
    "register_sde",
    "sde_names",
    "GRIDS",
    "time_grid",
    "VARIANCES",
    "ScoreMoments",
    "reverse_variance",
    "score_moments",
    "DIVERGENCES",
    "PROBES",
    "divergence_fn",
    "draw_probes",
    "exact_divergence",
    "probe_divergences",
    "CountingScore",
]
