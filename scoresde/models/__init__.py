"""Score networks (``ScoreMLP``, ``NCSN``, ``DDPMUNet``), their registry, the output parameterisations, consistency
models, flow maps, and the model seam's declaration (`ModelSpec`, defined beside the SDEs in
`scoresde.processes.seam`)."""

from ..processes.seam import ModelSpec, spec_of
from .autoencoder import KLAutoencoder, LatentCodec, LatentModel
from .classifier import NoiseConditionalClassifier
from .consistency import ConsistencyModel
from .embeddings import GaussianFourierEmbedding, SinusoidalEmbedding, sinusoidal_embedding
from .flow_map import FlowMapModel
from .mlp import ScoreMLP
from .ncsn import NCSN
from .network import ScoreNetwork
from .parameterization import PARAMETERIZATIONS, ScoreModel
from .registry import create_model, models, register_model
from .unet import DDPMUNet

__all__ = [
    "ModelSpec",
    "spec_of",
    "ConsistencyModel",
    "FlowMapModel",
    "KLAutoencoder",
    "LatentCodec",
    "LatentModel",
    "NoiseConditionalClassifier",
    "ScoreMLP",
    "NCSN",
    "DDPMUNet",
    "ScoreModel",
    "ScoreNetwork",
    "PARAMETERIZATIONS",
    "create_model",
    "models",
    "register_model",
    "GaussianFourierEmbedding",
    "SinusoidalEmbedding",
    "sinusoidal_embedding",
]
