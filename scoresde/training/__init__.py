"""Training: run kinds, objectives (denoising score matching, the hybrid learned-variance loss, distillation), the
Trainer (the loop only), checkpoints, run folders, the model of a run, what the commands do to a run folder, and
diffusers imports."""

from .checkpoint import CHECKPOINT, CheckpointError, load_checkpoint, save_checkpoint
from .classifier import train_classifier
from .data import DataStream
from .distill import distill, distillation_config, student_sampling
from .kinds import RunKind, get_run_kind, register_run_kind, run_kind, run_kinds
from .losses import VLBTimeSampler, classifier_loss, ddpm_loss, dsm_loss, hybrid_loss, smld_loss
from .run_folder import RunFolderError
from .runs import build_model, load_score_model, load_teacher, wrap_network
from .stage_objectives import AutoencoderObjective, SuperResolutionDSM  # noqa: F401  (registration)
from .trainer import EMA, Trainer, TrainingDiverged, TrainResult, init_distributed, learning_rate
from .workflows import RunTraining, cascade_base, run_bound, sample_cascade_run, sample_run, train_run

__all__ = [
    "RunKind",
    "register_run_kind",
    "run_kind",
    "run_kinds",
    "get_run_kind",
    "train_run",
    "RunTraining",
    "cascade_base",
    "sample_run",
    "sample_cascade_run",
    "run_bound",
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "EMA",
    "DataStream",
    "init_distributed",
    "learning_rate",
    "CHECKPOINT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "RunFolderError",
    "build_model",
    "wrap_network",
    "load_score_model",
    "load_teacher",
    "train_classifier",
    "distill",
    "distillation_config",
    "student_sampling",
    "dsm_loss",
    "ddpm_loss",
    "smld_loss",
    "hybrid_loss",
    "classifier_loss",
    "VLBTimeSampler",
]
