"""Run configs: frozen typed sections (SDE, model, data, train, distill), YAML/TOML I/O and named presets."""

from .schema import (
    ConfigError,
    DataConfig,
    DistillConfig,
    ModelConfig,
    RunConfig,
    SDEConfig,
    TrainConfig,
    config_from_dict,
    load_config,
    override,
    preset,
    presets,
    register_preset,
    save_config,
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
