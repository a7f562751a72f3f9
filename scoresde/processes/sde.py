"""The SDEs in one import: the base class with its reverse SDE and probability flow and the name registry
(`scoresde.processes.base`), the VP family (`scoresde.processes.vp`) and VE (`scoresde.processes.ve`)."""

from . import vp  # noqa: F401  (registered first: the registry lists vp, vp-cosine, subvp, then ve)
from .base import (
    SDE,
    VARIABLES,
    ProbabilityFlow,
    ReverseSDE,
    ScoreFn,
    check_sde,
    create_sde,
    evaluate_score,
    log_snr_times,
    register_sde,
    sde_names,
)
from .ve import VESDE
from .vp import VPSDE, DiscreteVPSDE, SubVPSDE

__all__ = [
    "SDE",
    "VPSDE",
    "DiscreteVPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "ProbabilityFlow",
    "ScoreFn",
    "evaluate_score",
    "check_sde",
    "log_snr_times",
    "register_sde",
    "sde_names",
    "create_sde",
    "VARIABLES",
]
