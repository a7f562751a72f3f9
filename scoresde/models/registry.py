"""Score-network registry: ``@register_model(name)`` on a class; `create_model` builds one by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .._checks import check_in_registry, registering

__all__ = ["register_model", "create_model", "models"]

_MODELS: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a score network available to `create_model` and configs as ``name``."""

    return registering("model", _MODELS, name)


def models() -> list[str]:
    """Names of the registered score networks."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered network ``name`` with keyword arguments (its constructor's)."""
    check_in_registry("model", name, tuple(_MODELS))
    return _MODELS[name](**kwargs)
