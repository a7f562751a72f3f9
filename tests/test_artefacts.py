"""What a command decides is a library function: a fitted grid's file (saved, loaded, refused when corrupt), a run's
sampling plan, the cached table of score moments, and the one JSON rule (null for every non-finite number)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scoresde import VPSDE, create_sde, preset, sample, toy_dataset
from scoresde._io import json_safe, json_text
from scoresde.config import override
from scoresde.samplers import FittedSolver, GridFit, Recipe, choose_recipe
from scoresde.training.kinds import run_kind
from scoresde.training.runs import run_score_moments


def test_a_fitted_grid_round_trips_and_a_bad_file_is_refused_in_one_line(tmp_path):
    fit = GridFit(
        torch.tensor([1.0, 0.3, 1e-3], dtype=torch.float64), 0.2, 0.1, 40, {"sampler": "dpm_solver", "order": 3}
    )
    path = fit.save(tmp_path / "grid.json")
    loaded = GridFit.load(path)
    assert torch.equal(loaded.times, fit.times) and loaded.sampler == "dpm_solver" and loaded.steps == 2
    assert loaded.to_dict() == fit.to_dict()
    (tmp_path / "bad.json").write_text(json.dumps({"times": [0.1, 0.5, 1.0]}))
    with pytest.raises(ValueError, match="bad.json is not a grid written by scoresde fit-grid .*decrease"):
        GridFit.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(ValueError, match="junk.json is not a grid"):
        GridFit.load(tmp_path / "junk.json")


def test_the_recipe_of_a_run_a_grid_and_a_student():
    grid = GridFit(torch.tensor([1.0, 0.5, 0.1, 1e-3], dtype=torch.float64), 1, 1, 1, {"sampler": "unipc", "order": 2})
    recipe = choose_recipe(run_kind(preset("toy-vp")).recipe(preset("toy-vp")), artefact=grid.recipe(),
                           options={"order": 1})  # fmt: skip
    assert (recipe.sampler, recipe.steps, recipe.options) == ("unipc", 3, {"order": 1})  # the user's option is kept
    assert list(recipe.times) == grid.times.tolist() and recipe.fitted == grid.settings
    assert choose_recipe().sampler == "dpm_solver"
    with pytest.raises(ValueError, match="the grid has 3 steps"):
        choose_recipe(artefact=grid.recipe(), steps=5)
    student = override(preset("toy-vp"), "kind=consistency", "distill.method=consistency",
                       "distill.teacher=oracle:8gaussians")  # fmt: skip
    own = run_kind(student).recipe(student, 2)
    assert own.fixed and choose_recipe(own, steps=2).sampler == "consistency"
    with pytest.raises(ValueError, match="samples with --sampler consistency, not ddim"):
        choose_recipe(own, sampler="ddim")
    solver = FittedSolver(grid.times, 2, [[0.0], [0.0], [0.0]], 1.0, 1.0).recipe()
    assert choose_recipe(own, artefact=solver) is solver  # a fitted solver is its own recipe
    with pytest.raises(ValueError, match="a fitted solver sets its own sampler, grid and coefficients; drop steps"):
        choose_recipe(artefact=solver, steps=3)


def test_a_recipe_samples_what_its_keyword_form_samples():
    """`sample(sde, model, shape, recipe)` draws exactly what the keywords it stands for draw; a keyword that
    clashes with the recipe is one line."""
    sde, oracle = create_sde("vp"), toy_dataset("gmm").oracle
    score = oracle.score_fn(sde)
    recipe = Recipe("dpm_solver", 6, "log_snr", options={"order": 2})
    a = sample(sde, score, (8, 2), recipe, generator=torch.Generator().manual_seed(0)).x
    b = sample(sde, score, (8, 2), "dpm_solver", steps=6, schedule="log_snr", order=2,
               generator=torch.Generator().manual_seed(0)).x  # fmt: skip
    assert torch.equal(a, b) and recipe.sample_kwargs() == {"sampler": "dpm_solver", "steps": 6,
                                                            "schedule": "log_snr", "order": 2}  # fmt: skip
    with pytest.raises(ValueError, match="the recipe sets its own sampler, grid and coefficients; drop order"):
        sample(sde, score, (8, 2), recipe, order=3)


def test_score_moments_are_computed_once_and_cached_in_the_run(tmp_path):
    sde = VPSDE()
    config = preset("toy-vp")
    oracle = toy_dataset(config.data.name).oracle.score_fn(sde)
    grid = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    first = run_score_moments(tmp_path, oracle, sde, config.data, grid, "uniform-3")
    assert (tmp_path / "score_moments-uniform-3.safetensors").is_file()
    cached = run_score_moments(
        tmp_path, lambda x, t: 0 * x, sde, config.data, grid, "uniform-3"
    )  # read, not recomputed
    assert torch.equal(first.gamma, cached.gamma) and bool((first.gamma > 0).all())
    with pytest.raises(ValueError, match="data set is unknown"):
        run_score_moments(tmp_path, oracle, sde, None, grid, "other")


def test_one_json_rule_null_for_every_non_finite_number():
    value = {"a": math.nan, "b": [math.inf, 1.0, (2, -math.inf)], "c": "x", "d": None, "e": True}
    assert json_safe(value) == {"a": None, "b": [None, 1.0, [2, None]], "c": "x", "d": None, "e": True}
    assert json.loads(json_text(value)) == json_safe(value)
    result = sample(VPSDE(), lambda x, t: -x, (4, 2), "ddim", steps=2, t_min=1e-3, eta=0.0)
    json.dumps(result.to_dict(), allow_nan=False)  # the sampler's settings follow the rule
