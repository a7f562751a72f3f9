"""Evaluation: sample metrics (energy distance, MMD, sliced Wasserstein; FD / KID / precision-recall on features),
feature networks, and sampler comparisons on held-out data."""

from .comparison import (
    Comparison,
    SamplerRun,
    SamplerSpec,
    compare_samplers,
    default_lineup,
    measure_images,
    student_lineup,
)
from .during_training import TrainingEvaluator, ema_sweep, evaluation_names
from .held_out import HeldOut, held_out
from .metrics import (
    GaussianStatistics,
    energy_distance,
    energy_distance_floor,
    frechet_distance,
    kernel_distance,
    mean_and_standard_error,
    mmd,
    precision_recall,
    sliced_energy_distance,
    sliced_wasserstein,
)

__all__ = [
    "Comparison",
    "HeldOut",
    "TrainingEvaluator",
    "evaluation_names",
    "ema_sweep",
    "SamplerRun",
    "SamplerSpec",
    "compare_samplers",
    "default_lineup",
    "held_out",
    "measure_images",
    "student_lineup",
    "GaussianStatistics",
    "energy_distance",
    "energy_distance_floor",
    "frechet_distance",
    "kernel_distance",
    "mean_and_standard_error",
    "mmd",
    "precision_recall",
    "sliced_energy_distance",
    "sliced_wasserstein",
]
