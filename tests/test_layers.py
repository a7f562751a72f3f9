"""The package's layers (DESIGN.md): an import only points down, no cycle anywhere (imports inside functions
included), and the layer rules hold. Parsed from the source (AST), so nothing is imported to check it; each check is
shown to fail on a planted violation."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scoresde"

LAYERS = [
    ("_checks", "_io", "_stats", "_deprecated", "_distributed"),
    ("processes",),
    ("oracles",),
    ("datasets",),
    ("models",),
    ("samplers",),
    ("likelihood",),
    ("config",),
    ("training",),
    ("evaluation",),
    ("app",),
    ("__init__", "__main__"),
]
"""Lowest first: a module may import its own layer and the ones before it."""

RULES = {
    # layer -> the parts it may never import, whatever their order
    "processes": {"oracles", "datasets", "models", "samplers", "likelihood", "config", "training", "evaluation", "app"},
    "oracles": {"datasets", "models", "samplers", "likelihood", "config", "training", "evaluation", "app"},
    "samplers": {"models", "training", "config", "evaluation", "app"},
    "likelihood": {"models", "training", "config", "evaluation", "app"},
}
ENTRY_POINTS = {"scoresde.__main__"}
"""The only modules that may import the app layer (``python -m scoresde``)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The layer part of a module: its first component under ``scoresde`` (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    if not base.startswith("scoresde"):
        return []
    modules = set(_modules())
    targets = []
    for alias in node.names:  # `from . import sub` imports a module
        sub = f"{base}.{alias.name}"
        targets.append(sub if sub in modules else base)
    return targets


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """Module -> the scoresde modules it imports (at module level or inside functions)."""
    graph: dict[str, set[str]] = {}
    for module, path in _modules().items():
        edges: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                edges.update(_resolve(node, module, path.name == "__init__.py"))
            elif isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name.startswith("scoresde"))
        graph[module] = {e for e in edges if e != module}
    return graph


def _rank(module: str) -> int:
    part = _part(module)
    for rank, layer in enumerate(LAYERS):
        if part in layer:
            return rank
    raise AssertionError(f"{module} is in no layer: add its folder to LAYERS")


def _is_ancestor(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every upward import, rule breach and import of the app layer in ``graph``."""
    found = []
    for module, targets in graph.items():
        for target in targets:
            if _is_ancestor(target, module) and _part(target) == _part(module):
                continue  # a subpackage's own __init__
            if _rank(target) > _rank(module):
                found.append(f"upward import: {module} -> {target}")
            elif _part(target) in RULES.get(_part(module), ()):
                found.append(f"rule: {_part(module)} never imports {_part(target)} ({module} -> {target})")
            elif _part(target) == "app" and _part(module) != "app" and module not in ENTRY_POINTS:
                found.append(f"nothing imports the app layer: {module} -> {target}")
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a cycle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_is_in_a_layer(graph):
    assert len(graph) > 50
    for module in graph:
        _rank(module)


def test_no_import_points_up_or_breaks_a_rule(graph):
    assert violations(graph) == []


def test_no_import_cycle_even_inside_functions(graph):
    assert cycles(graph) == []


def test_a_planted_upward_import_is_caught(graph):
    planted = {k: set(v) for k, v in graph.items()}
    planted["scoresde.processes.base"].add("scoresde.training.trainer")
    planted["scoresde.samplers.pc"].add("scoresde.models.mlp")
    planted["scoresde.oracles.uniform_boxes"].add("scoresde.app.cli")
    found = violations(planted)
    assert "upward import: scoresde.processes.base -> scoresde.training.trainer" in found
    assert "upward import: scoresde.samplers.pc -> scoresde.models.mlp" not in found  # models is below samplers ...
    assert any("rule: samplers never imports models" in v for v in found)  # ... but the rule forbids it
    assert any(v.startswith("upward import: scoresde.oracles.uniform_boxes -> scoresde.app.cli") for v in found)
    assert len(found) == 3


def test_a_planted_cycle_is_caught(graph):
    planted = {k: set(v) for k, v in graph.items()}
    planted["scoresde.processes.grids"].add("scoresde.processes.seam")
    planted["scoresde.processes.seam"].add("scoresde.processes.grids")
    assert cycles(planted) == [["scoresde.processes.grids", "scoresde.processes.seam"]]
