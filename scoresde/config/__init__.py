"""Run configs: frozen typed sections (`schema`), YAML/TOML files (`io`) and named presets (`presets`)."""

from .io import load_config, save_config
from .presets import preset, presets, register_preset
from .schema import (
    ConfigError,
    DataConfig,
    DistillConfig,
    ModelConfig,
    RunConfig,
    SDEConfig,
    TrainConfig,
    config_from_dict,
    override,
)

__all__ = [
    "SDEConfig",
    "ModelConfig",
    "DataConfig",
    "TrainConfig",
    "DistillConfig",
    "RunConfig",
    "preset",
    "presets",
    "register_preset",
    "override",
    "load_config",
    "save_config",
    "config_from_dict",
    "ConfigError",
]
