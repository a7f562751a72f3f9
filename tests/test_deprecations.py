"""Old import paths and dropped top-level names keep working for one release, each with a warning naming the new
home; the curated top level stays small."""

from __future__ import annotations

import importlib

import pytest

import scoresde
from scoresde._deprecated import OLD_PATHS, ScoresdeDeprecationWarning


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_every_old_module_path_forwards_its_names_with_a_warning(old):
    module = importlib.import_module(old)
    homes = [importlib.import_module(home) for home in OLD_PATHS[old]]
    public = [name for name in getattr(homes[0], "__all__", []) if not name.startswith("_")]
    assert public, f"{OLD_PATHS[old][0]} declares no public names"
    for name in public:
        with pytest.warns(ScoresdeDeprecationWarning, match=rf"{old}\.{name} is deprecated: use scoresde\."):
            value = getattr(module, name)
        assert value is getattr(homes[0], name)
    with pytest.raises(AttributeError, match="no attribute"):
        module.no_such_name  # noqa: B018


def test_old_from_import_statements_still_work():
    with pytest.warns(ScoresdeDeprecationWarning, match="scoresde.sde.VPSDE is deprecated: use scoresde.processes"):
        from scoresde.sde import VPSDE
    assert VPSDE is scoresde.VPSDE
    with pytest.warns(ScoresdeDeprecationWarning, match="use scoresde.training.distill.distill"):
        from scoresde.distillation import distill
    assert distill is scoresde.distill
    with pytest.warns(ScoresdeDeprecationWarning, match="use scoresde.processes.grids.time_grid"):
        from scoresde.samplers.grids import time_grid
    assert time_grid is scoresde.time_grid


@pytest.mark.parametrize("name", sorted(scoresde._DROPPED))
def test_every_dropped_top_level_name_forwards_with_a_warning(name):
    home, _, attr = scoresde._DROPPED[name].partition(":")
    with pytest.warns(ScoresdeDeprecationWarning, match=rf"scoresde\.{name} is deprecated: use {home}\."):
        value = getattr(scoresde, name)
    assert value is getattr(importlib.import_module(home), attr or name)


def test_the_public_api_is_curated():
    assert 35 <= len(scoresde.__all__) <= 50
    assert not set(scoresde.__all__) & set(scoresde._DROPPED)
    for name in scoresde.__all__:
        getattr(scoresde, name)  # every curated name is there without a warning (warnings are errors here)
    with pytest.raises(AttributeError):
        scoresde.no_such_name  # noqa: B018
