"""Score networks (``ScoreMLP``, ``NCSN``, ``DDPMUNet``), their registry and the output parameterisations."""

from .classifier import NoiseConditionalClassifier
from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding, sinusoidal_embedding
from .mlp import ScoreMLP
from .ncsn import NCSN
from .parameterization import PARAMETERIZATIONS, ScoreModel
from .registry import create_model, models, register_model
from .unet import DDPMUNet

__all__ = [
    "NoiseConditionalClassifier",
    "ScoreMLP",
    "NCSN",
    "DDPMUNet",
    "ScoreModel",
    "PARAMETERIZATIONS",
    "create_model",
    "models",
    "register_model",
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "sinusoidal_embedding",
]
