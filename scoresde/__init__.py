"""scoresde: score-based generative modelling with stochastic differential equations.

The public API lives here; module layout behind it may change, these names may not. The figures live in
`scoresde.viz` (imported on demand: it loads matplotlib).
"""

from .analytic import GaussianMixture, LabelledMixture, MixtureScore, entropy_by_quadrature
from .config import ConfigError, DataConfig, ModelConfig, RunConfig, SDEConfig, TrainConfig, load_config, override, preset, presets, save_config
from .evaluation import Comparison, HeldOut, SamplerRun, SamplerSpec, compare_samplers, default_lineup, held_out
from .datasets import DataTransform, ImageDataset, ToyDataset, image_dataset, image_datasets, register_toy, toy_dataset, toy_datasets
from .likelihood import BitsPerDimResult, ELBOResult, LikelihoodResult, bits_per_dim, ddpm_bound, elbo, log_likelihood
from .losses import classifier_loss, ddpm_loss, dsm_loss, smld_loss
from .metrics import energy_distance, mean_and_standard_error, mmd, sliced_wasserstein
from .samplers import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    SampleResult,
    inpaint,
    named_mask,
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
from .models import NCSN, DDPMUNet, NoiseConditionalClassifier, ScoreMLP, ScoreModel, create_model, models, register_model
from .sde import SDE, ReverseSDE, ScoreFn, SubVPSDE, VESDE, VPSDE, evaluate_score
from .report import likelihood_summary, run_demo, write_comparison
from .training import (CheckpointError, Trainer, TrainingDiverged, TrainResult, load_checkpoint, load_score_model, save_checkpoint,
                       train_classifier)

__version__ = "0.1.0"

__all__ = [
    "ConfigError", "DataConfig", "ModelConfig", "RunConfig", "SDEConfig", "TrainConfig", "load_config", "override", "preset",
    "presets", "save_config", "ImageDataset", "image_dataset", "image_datasets", "ddpm_loss", "dsm_loss", "smld_loss",
    "NCSN", "DDPMUNet", "ScoreMLP", "ScoreModel", "create_model", "models", "register_model", "CheckpointError", "Trainer",
    "TrainingDiverged", "TrainResult", "load_checkpoint", "load_score_model", "save_checkpoint",
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
    "mean_and_standard_error",
    "log_likelihood",
    "LikelihoodResult",
    "bits_per_dim",
    "BitsPerDimResult",
    "DataTransform",
    "elbo",
    "ddpm_bound",
    "ELBOResult",
    "compare_samplers",
    "default_lineup",
    "SamplerSpec",
    "SamplerRun",
    "Comparison",
    "held_out",
    "HeldOut",
    "likelihood_summary",
    "write_comparison",
    "run_demo",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "inpaint",
    "named_mask",
    "LabelledMixture",
    "NoiseConditionalClassifier",
    "classifier_loss",
    "train_classifier",
]
