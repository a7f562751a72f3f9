"""scoresde: score-based generative modelling with stochastic differential equations.

The public API: about forty names, the ones most programs need. Everything else lives in its subpackage, which
shows the layers (lowest first): `scoresde.processes` (SDEs, grids, the model seam's declaration),
`scoresde.oracles` (exact models), `scoresde.datasets`, `scoresde.models` (networks), `scoresde.samplers`,
`scoresde.likelihood`, `scoresde.config`, `scoresde.training`, `scoresde.evaluation`, and `scoresde.app` (the
command line, reports and figures, `scoresde.app.figures`). Names that used to be here, and the old module paths
(``scoresde.sde``, ``scoresde.viz``, ...), keep working for one release with a `ScoresdeDeprecationWarning`.
"""

from ._deprecated import ScoresdeDeprecationWarning, forward, install
from .config import ConfigError, RunConfig, load_config, preset, presets
from .datasets import DataTransform, image_dataset, toy_dataset
from .evaluation import compare_samplers, energy_distance, energy_distance_floor, mmd
from .likelihood import (
    BitsPerDimResult,
    LikelihoodResult,
    bits_per_dim,
    ddpm_bound,
    elbo,
    latent_bits_per_dim,
    log_likelihood,
)
from .models import (
    NCSN,
    ConsistencyModel,
    DDPMUNet,
    FlowMapModel,
    KLAutoencoder,
    LatentModel,
    ModelSpec,
    ScoreMLP,
    ScoreModel,
    create_model,
)
from .oracles import GaussianMixture, LabelledMixture, UniformBoxes
from .processes import SDE, VESDE, VPSDE, SubVPSDE, create_sde
from .samplers import (
    ClassifierFreeGuidance,
    ClassifierGuidance,
    SampleResult,
    inpaint,
    sample,
    sample_cascade,
    time_grid,
)
from .training import Trainer, TrainResult, distill, dsm_loss, load_score_model

__version__ = "0.1.0"

__all__ = [
    # forward processes
    "SDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "create_sde",
    # exact models
    "GaussianMixture",
    "LabelledMixture",
    "UniformBoxes",
    # models and their declaration
    "ModelSpec",
    "ScoreModel",
    "ScoreMLP",
    "NCSN",
    "DDPMUNet",
    "ConsistencyModel",
    "FlowMapModel",
    "KLAutoencoder",
    "LatentModel",
    "create_model",
    # sampling
    "sample",
    "sample_cascade",
    "SampleResult",
    "time_grid",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "inpaint",
    # likelihoods
    "log_likelihood",
    "LikelihoodResult",
    "bits_per_dim",
    "BitsPerDimResult",
    "latent_bits_per_dim",
    "elbo",
    "ddpm_bound",
    # training
    "Trainer",
    "TrainResult",
    "distill",
    "dsm_loss",
    "load_score_model",
    # configs
    "RunConfig",
    "preset",
    "presets",
    "load_config",
    "ConfigError",
    # data
    "DataTransform",
    "toy_dataset",
    "image_dataset",
    # evaluation
    "energy_distance",
    "energy_distance_floor",
    "mmd",
    "compare_samplers",
    "ScoresdeDeprecationWarning",
]

_DROPPED = {
    "DataConfig": "scoresde.config",
    "ModelConfig": "scoresde.config",
    "SDEConfig": "scoresde.config",
    "TrainConfig": "scoresde.config",
    "override": "scoresde.config",
    "save_config": "scoresde.config",
    "ImageDataset": "scoresde.datasets",
    "ToyDataset": "scoresde.datasets",
    "image_datasets": "scoresde.datasets",
    "register_toy": "scoresde.datasets",
    "toy_datasets": "scoresde.datasets",
    "distillation_config": "scoresde.training",
    "Comparison": "scoresde.evaluation",
    "HeldOut": "scoresde.evaluation",
    "SamplerRun": "scoresde.evaluation",
    "SamplerSpec": "scoresde.evaluation",
    "default_lineup": "scoresde.evaluation",
    "held_out": "scoresde.evaluation",
    "student_lineup": "scoresde.evaluation",
    "classifier_loss": "scoresde.training",
    "ddpm_loss": "scoresde.training",
    "hybrid_loss": "scoresde.training",
    "smld_loss": "scoresde.training",
    "mean_and_standard_error": "scoresde.evaluation",
    "sliced_energy_distance": "scoresde.evaluation",
    "sliced_wasserstein": "scoresde.evaluation",
    "NoiseConditionalClassifier": "scoresde.models",
    "register_model": "scoresde.models",
    "model_names": "scoresde.models:models",
    "likelihood_summary": "scoresde.app.report",
    "write_comparison": "scoresde.app.report",
    "run_demo": "scoresde.app.demo",
    "RunFolderError": "scoresde.training",
    "correctors": "scoresde.samplers",
    "fit_grid": "scoresde.samplers",
    "named_mask": "scoresde.samplers",
    "predictors": "scoresde.samplers",
    "register_corrector": "scoresde.samplers",
    "register_predictor": "scoresde.samplers",
    "register_sampler": "scoresde.samplers",
    "sampler_options": "scoresde.samplers",
    "sampler_names": "scoresde.samplers:samplers",
    "ProbabilityFlow": "scoresde.processes",
    "ReverseSDE": "scoresde.processes",
    "ScoreFn": "scoresde.processes",
    "evaluate_score": "scoresde.processes",
    "register_sde": "scoresde.processes",
    "sde_names": "scoresde.processes",
    "MixtureScore": "scoresde.oracles",
    "entropy_by_quadrature": "scoresde.oracles",
    "ELBOResult": "scoresde.likelihood",
    "CheckpointError": "scoresde.training",
    "TrainingDiverged": "scoresde.training",
    "load_checkpoint": "scoresde.training",
    "save_checkpoint": "scoresde.training",
    "train_classifier": "scoresde.training",
}
"""Names the top level had before the curation -> their home now (forwarded with a deprecation warning)."""

__getattr__ = forward("scoresde", _DROPPED)
install()
