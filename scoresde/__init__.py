"""scoresde: score-based generative modelling with stochastic differential equations.

The public API lives here; module layout behind it may change, these names may not. The figures live in
`scoresde.viz` (imported on demand: it loads matplotlib).
"""

from .analytic import GaussianMixture, LabelledMixture, MixtureScore, entropy_by_quadrature
from .bounds import ELBOResult, ddpm_bound, elbo
from .bpd import BitsPerDimResult, bits_per_dim
from .config import (
    ConfigError,
    DataConfig,
    ModelConfig,
    RunConfig,
    SDEConfig,
    TrainConfig,
    load_config,
    override,
    preset,
    presets,
    save_config,
)
from .datasets import (
    DataTransform,
    ImageDataset,
    ToyDataset,
    image_dataset,
    image_datasets,
    register_toy,
    toy_dataset,
    toy_datasets,
)
from .distillation import ConsistencyModel, distill, distillation_config
from .evaluation import Comparison, HeldOut, SamplerRun, SamplerSpec, compare_samplers, default_lineup, held_out
from .likelihood import LikelihoodResult, log_likelihood
from .losses import classifier_loss, ddpm_loss, dsm_loss, hybrid_loss, smld_loss
from .metrics import energy_distance, energy_distance_floor, mean_and_standard_error, mmd, sliced_wasserstein
from .models import NCSN, DDPMUNet, NoiseConditionalClassifier, ScoreMLP, ScoreModel, create_model, register_model
from .models import models as model_names
from .report import likelihood_summary, run_demo, write_comparison
from .run_folder import RunFolderError
from .samplers import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    SampleResult,
    correctors,
    fit_grid,
    inpaint,
    named_mask,
    predictors,
    register_corrector,
    register_predictor,
    register_sampler,
    sample,
    sampler_options,
    time_grid,
)
from .samplers import samplers as sampler_names
from .sde import (
    SDE,
    VESDE,
    VPSDE,
    ProbabilityFlow,
    ReverseSDE,
    ScoreFn,
    SubVPSDE,
    create_sde,
    evaluate_score,
    register_sde,
    sde_names,
)
from .training import (
    CheckpointError,
    Trainer,
    TrainingDiverged,
    TrainResult,
    load_checkpoint,
    load_score_model,
    save_checkpoint,
    train_classifier,
)
from .uniform_boxes import UniformBoxes

# `scoresde.samplers` and `scoresde.models` are the subpackages; their name lists are `sampler_names()` and
# `model_names()` here (the functions `samplers()` / `models()` stay in the subpackages).

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "SDEConfig",
    "TrainConfig",
    "load_config",
    "override",
    "preset",
    "presets",
    "save_config",
    "ImageDataset",
    "image_dataset",
    "image_datasets",
    "ddpm_loss",
    "dsm_loss",
    "hybrid_loss",
    "ConsistencyModel",
    "distill",
    "distillation_config",
    "energy_distance_floor",
    "fit_grid",
    "smld_loss",
    "NCSN",
    "DDPMUNet",
    "ScoreMLP",
    "ScoreModel",
    "create_model",
    "model_names",
    "register_model",
    "CheckpointError",
    "RunFolderError",
    "Trainer",
    "UniformBoxes",
    "TrainingDiverged",
    "TrainResult",
    "load_checkpoint",
    "load_score_model",
    "save_checkpoint",
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "ProbabilityFlow",
    "ScoreFn",
    "evaluate_score",
    "create_sde",
    "register_sde",
    "sde_names",
    "GaussianMixture",
    "MixtureScore",
    "entropy_by_quadrature",
    "ToyDataset",
    "register_toy",
    "toy_dataset",
    "toy_datasets",
    "sample",
    "SampleResult",
    "sampler_names",
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
