"""Run configs in files: YAML or TOML, written atomically, read with one-line errors naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .._io import write_atomic
from .schema import ConfigError, RunConfig, config_from_dict, yaml_error_line

__all__ = ["save_config", "load_config"]


def save_config(config: RunConfig, path: str | Path) -> Path:
    """Write ``config`` as YAML (``.yaml`` / ``.yml``) or TOML (``.toml``), atomically (a kill leaves the old file
    or the new one)."""
    path = Path(path)
    data = config.to_dict()
    if path.suffix == ".toml":
        import tomli_w

        text = tomli_w.dumps(_drop_none(data))
    elif path.suffix in (".yaml", ".yml"):
        text = yaml.safe_dump(data, sort_keys=False)
    else:
        raise ConfigError(f"config file {path} must end in .yaml, .yml or .toml")
    return write_atomic(path, text.encode())


def load_config(path: str | Path) -> RunConfig:
    """Read a YAML or TOML config (unknown or invalid fields raise `ConfigError` naming them)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
        if path.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} must end in .yaml, .yml or .toml")
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {yaml_error_line(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read ({exc.strerror or exc})") from None
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:].upper()}: {exc}") from None
    if not data:
        raise ConfigError(
            f"config file {path} is empty (no section is set); write the fields of the run (scoresde list shows the "
            f"presets; a run's config.yaml is a full example), or pass --preset"
        )
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _drop_none(data: Any) -> Any:
    """TOML has no null: absent keys take their defaults (which are the None ones)."""
    if isinstance(data, dict):
        return {k: _drop_none(v) for k, v in data.items() if v is not None}
    return data
