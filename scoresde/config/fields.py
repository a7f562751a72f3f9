"""What every config section shares: the error type and the checks of a field's value and type."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

__all__ = ["ConfigError", "require", "check_types"]


class ConfigError(ValueError):
    """An invalid config field or value; the message names the field."""


def require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"invalid config field {name!r}: {message}")


def check_types(section: Any, prefix: str) -> None:
    """Every ``int`` field an integer (not a boolean, which Python counts as one) and every ``float`` field a finite
    real number, whatever the field's own checks say."""
    for f in dataclasses.fields(section):
        value, kind, name = getattr(section, f.name), str(f.type), f"{prefix}.{f.name}"
        if value is None and "None" in kind:
            continue
        if kind.startswith("int"):
            require(isinstance(value, int) and not isinstance(value, bool), name, f"must be an integer, got {value!r}")
        elif kind.startswith("float"):
            real = isinstance(value, (int, float)) and not isinstance(value, bool)
            require(real and math.isfinite(value), name, f"must be a finite number, got {value!r}")
        elif kind == "bool":
            require(isinstance(value, bool), name, f"must be true or false, got {value!r}")
