"""Old import paths and top-level names, kept for one release with a `ScoresdeDeprecationWarning` naming the new home.

The package moved from 25 flat modules to layered subpackages (see ``DESIGN.md``). An old module path such as
``scoresde.sde`` is served by `OldPathFinder`, a finder for exactly the names in `OLD_PATHS` (nothing else is
touched): it gives a module whose attributes forward to the new homes, warning on each access. Dropped top-level
names are forwarded the same way by ``scoresde.__getattr__`` (`forward`)."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Callable
from typing import Any

__all__ = ["ScoresdeDeprecationWarning", "OLD_PATHS", "OldPathFinder", "forward", "install"]


class ScoresdeDeprecationWarning(DeprecationWarning):
    """A name or import path of scoresde that moved; the message names the new one."""


REMOVAL = "release 0.3 (2027-06-01)"
"""When the forwards below go: every warning names it."""

_SDE_HOMES = (
    "scoresde.processes.score",
    "scoresde.processes.reverse",
    "scoresde.processes.base",
    "scoresde.processes.vp",
    "scoresde.processes.ve",
)

OLD_PATHS: dict[str, tuple[str, ...]] = {
    "scoresde.sde": _SDE_HOMES,
    "scoresde.processes.sde": _SDE_HOMES,
    "scoresde.samplers.grids": ("scoresde.processes.grids",),
    "scoresde.reverse_variance": ("scoresde.processes.reverse_variance",),
    "scoresde.analytic": ("scoresde.oracles.gaussian_mixture",),
    "scoresde.uniform_boxes": ("scoresde.oracles.uniform_boxes",),
    "scoresde.interop": ("scoresde.training.interop",),
    "scoresde.exponential_integrator": ("scoresde.likelihood.exponential_integrator",),
    "scoresde.bounds": ("scoresde.likelihood.bounds",),
    "scoresde.bpd": ("scoresde.likelihood.bpd",),
    "scoresde.checkpoint": ("scoresde.training.checkpoint",),
    "scoresde.run_folder": ("scoresde.training.run_folder", "scoresde._io"),
    "scoresde.losses": ("scoresde.training.losses", "scoresde.config.schema"),
    "scoresde.distillation": (
        "scoresde.training.distillation",
        "scoresde.training.distill",
        "scoresde.training.runs",
        "scoresde.models.consistency",
    ),
    "scoresde.metrics": ("scoresde.evaluation.metrics",),
    "scoresde.features": ("scoresde.evaluation.features",),
    "scoresde.cli": ("scoresde.app.cli",),
    "scoresde.report": ("scoresde.app.report", "scoresde.app.demo"),
    "scoresde.viz": ("scoresde.app.figures", "scoresde.app.image_figures", "scoresde.app.result_figures"),
}
"""Old module path -> the modules its public names live in now (searched in order)."""


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} is deprecated: use {new} (the old name goes in {REMOVAL})",
        ScoresdeDeprecationWarning,
        stacklevel=3,
    )


def forward(old_module: str, homes: tuple[str, ...] | dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``old_module``: a name found in one of ``homes`` (module paths searched in order,
    or a mapping name -> ``"module"`` or ``"module:attribute"``) is returned with a `ScoresdeDeprecationWarning`
    naming its new path."""

    def __getattr__(name: str) -> Any:
        if isinstance(homes, dict):
            candidates = [homes[name].split(":")] if name in homes else []
            candidates = [(home, attr[0] if attr else name) for home, *attr in candidates]
        else:
            candidates = [(home, name) for home in homes]
        for home, attr in candidates:
            module = importlib.import_module(home)
            if hasattr(module, attr) and not name.startswith("__"):
                _warn(f"{old_module}.{name}", f"{home}.{attr}")
                return getattr(module, attr)
        raise AttributeError(f"module {old_module!r} has no attribute {name!r}")

    return __getattr__


class _OldPathLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = types.ModuleType(spec.name, f"Deprecated path: see {', '.join(OLD_PATHS[spec.name])}.")
        module.__getattr__ = forward(spec.name, OLD_PATHS[spec.name])  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        pass


class OldPathFinder(importlib.abc.MetaPathFinder):
    """Finds the old module paths of `OLD_PATHS` (and only those)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in OLD_PATHS:
            return None
        return importlib.machinery.ModuleSpec(fullname, _OldPathLoader())


def install() -> None:
    """Put one `OldPathFinder` on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(finder, OldPathFinder) for finder in sys.meta_path):
        sys.meta_path.append(OldPathFinder())
