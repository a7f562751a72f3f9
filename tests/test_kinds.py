"""Run kinds (issue 39): what a run is is declared once (``config.kind``, `scoresde.training.kinds`), old configs map
onto it, a contradiction is one line, nothing outside the registry decides on the fields it reads, and each command's
work is a library call."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from scoresde.config import override
from scoresde.config.presets import preset, presets
from scoresde.config.schema import ConfigError, config_from_dict
from scoresde.training.kinds import get_run_kind, infer_kind, run_kind, run_kinds

PACKAGE = Path(__file__).resolve().parents[1] / "scoresde"


def test_every_preset_declares_the_kind_its_sections_describe():
    for name in presets():
        config = preset(name)
        assert config.kind is not None and run_kind(config).name == config.kind == infer_kind(config), name


@pytest.mark.parametrize(
    "sections, kind, objective",
    [
        ({}, "score", "dsm"),
        ({"model": {"kwargs": {"learn_variance": True}}, "train": {"weighting": "eps", "n_steps": 10}},
         "learned_variance", "hybrid"),
        ({"model": {"name": "kl_autoencoder"}, "data": {"kind": "image", "name": "digits"}}, "autoencoder",
         "autoencoder"),
        ({"data": {"kind": "image", "name": "digits"}, "stage": {"autoencoder": "ae"}}, "latent", "dsm"),
        ({"model": {"kwargs": {"cond_channels": 1, "in_channels": 1}}, "data": {"kind": "image", "name": "digits"},
          "stage": {"low_resolution": 4}}, "super_resolution", "super_resolution"),
        ({"distill": {"method": "progressive", "teacher": "oracle:gmm"}}, "progressive", "progressive"),
        ({"distill": {"method": "consistency", "teacher": "oracle:gmm"}}, "consistency", "consistency"),
        ({"distill": {"method": "consistency_training"}}, "consistency_training", "consistency_training"),
        ({"distill": {"method": "flow_map", "teacher": "oracle:gmm"}}, "flow_map", "flow_map"),
        ({"distill": {"method": "flow_map_training"}}, "flow_map_training", "flow_map_training"),
    ],
)  # fmt: skip
def test_a_config_without_a_kind_is_read_as_the_kind_its_sections_describe(sections, kind, objective):
    """A config written before kinds were declared (``kind`` absent) loads unchanged and means what it meant."""
    config = config_from_dict(sections)
    assert config.kind is None and run_kind(config).name == kind and run_kind(config).objective == objective
    declared = config_from_dict({"kind": kind, **sections})
    assert run_kind(declared) is run_kind(config)


def test_declared_kinds_say_what_differs_between_them():
    assert get_run_kind("autoencoder").distributed is False and get_run_kind("score").distributed
    assert [k for k in run_kinds() if get_run_kind(k).teacher] == ["consistency", "flow_map", "progressive"]
    students = {"consistency", "consistency_training", "progressive", "flow_map", "flow_map_training"}
    assert {k for k in run_kinds() if get_run_kind(k).student} == students
    assert get_run_kind("latent").bound == "latent" and get_run_kind("super_resolution").bound == "cascade"
    assert get_run_kind("score").bound is None


def test_a_kind_that_contradicts_its_sections_and_an_unknown_kind_are_one_line():
    with pytest.raises(ValueError, match="kind: score is a score model.*describe a learned_variance run: set kind"):
        run_kind(override(preset("toy-vp"), "model.kwargs.learn_variance=true", "train.weighting=eps",
                          "train.n_steps=100", "train.importance_sampling=false"))  # fmt: skip
    with pytest.raises(ValueError, match="unknown run kind 'flow'; valid names are: autoencoder, consistency"):
        run_kind(override(preset("toy-vp"), "kind=flow"))
    with pytest.raises(ConfigError, match="kind"):
        config_from_dict({"kind": 3})
    assert override(preset("toy-vp"), "kind=null").kind is None


def test_the_trainer_refuses_a_contradicting_kind_before_writing(tmp_path):
    from scoresde.training import Trainer

    config = override(preset("toy-vp"), "kind=latent")
    with pytest.raises(ValueError, match="kind: latent models an autoencoder's latents"):
        Trainer(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


FIELDS = {("stage", "autoencoder"), ("stage", "low_resolution"), ("distill", "method"), ("model", "name")}
ALLOWED = {"training/kinds.py", "config/schema.py"}
"""The registry decides; the schema validates its own sections."""


def _decisions(tree: ast.AST) -> list[int]:
    """Lines where a kind field (``*.stage.autoencoder``, ``*.distill.method``, ``*.model.name``, ``learn_variance``)
    is tested: an ``if`` / ``while`` / conditional expression / ``assert`` condition or a comparison with a constant."""

    def reads_field(node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute):
                if (sub.value.attr, sub.attr) in FIELDS:
                    return True
            if isinstance(sub, ast.Constant) and sub.value == "learn_variance":
                return True
            if isinstance(sub, ast.Attribute) and sub.attr in ("is_autoencoder", "learns_variance"):
                return isinstance(sub.value, ast.Name) and sub.value.id == "config"
        return False

    lines = []
    for node in ast.walk(tree):
        tests = []
        if isinstance(node, (ast.If, ast.While, ast.IfExp, ast.Assert)):
            tests.append(node.test)
        if isinstance(node, ast.Compare) and any(isinstance(c, ast.Constant) for c in node.comparators):
            tests.append(node)
        lines += [node.lineno for test in tests if reads_field(test)]
    return sorted(set(lines))


def test_nothing_outside_the_run_kind_registry_decides_on_a_kind_field():
    sites = {}
    for path in PACKAGE.rglob("*.py"):
        name = path.relative_to(PACKAGE).as_posix()
        if name not in ALLOWED and (found := _decisions(ast.parse(path.read_text()))):
            sites[name] = found
    assert sites == {}


def test_the_site_counter_finds_a_planted_decision():
    planted = (
        "def f(config):\n    if config.stage.autoencoder:\n        return 1\n    return config.distill.method == 'x'\n"
    )
    assert _decisions(ast.parse(planted)) == [2, 4]
    assert _decisions(ast.parse("def f(config):\n    return load(config.stage.autoencoder)\n")) == []


def test_a_commands_work_is_a_library_call(tmp_path):
    """`train_run` trains the stage a run names first (its kind measures the autoencoder's scaling factor after
    training) and the run itself; `run_bound` is the latent run's bound, as `scoresde likelihood` reports it."""
    import math

    import torch

    from scoresde.likelihood import latent_bits_per_dim
    from scoresde.models import LatentModel
    from scoresde.samplers import Recipe, sample
    from scoresde.training import load_score_model, run_bound, sample_run, train_run
    from scoresde.training.stages import LATENTS_FILE, run_images

    train = {"steps": 2, "batch_size": 32, "warmup": 1, "log_every": 1, "checkpoint_every": 0}
    autoencoder = config_from_dict({
        "kind": "autoencoder", "data": {"kind": "image", "name": "digits"}, "train": train,
        "model": {"name": "kl_autoencoder", "kwargs": {"in_channels": 1, "image_size": 8, "latent_channels": 2,
                                                       "downsample": 2, "ch": 8, "groups": 4}}})  # fmt: skip
    latent = config_from_dict({
        "kind": "latent", "data": {"kind": "image", "name": "digits"}, "stage": {"autoencoder": "ae"},
        "train": {**train, "weighting": "eps"},
        "model": {"name": "ddpm_unet", "kwargs": {"in_channels": 2, "image_size": 4, "ch": 8, "ch_mult": [1],
                                                  "num_res_blocks": 1, "attn_resolutions": [], "groups": 4}},
    })  # fmt: skip
    run = train_run(latent, tmp_path / "run", stages={"autoencoder": autoencoder}, progress=False)
    assert run.result.step == 2 and run.stages["autoencoder"]["step"] == 2 and run.after == {}
    assert run.stages["autoencoder"]["scaling_factor"] > 0 and (tmp_path / "run" / "ae" / LATENTS_FILE).is_file()
    model, config, _ = load_score_model(tmp_path / "run")
    assert isinstance(model, LatentModel)
    x = run_images(config.data, "test")[:3]
    options = {"method": "ei_fixed", "steps": 4, "dtype": torch.float32, "divergence": "hutchinson"}
    got = run_bound(model, config, tmp_path / "run", x, generator=torch.Generator().manual_seed(0), **options)
    want = latent_bits_per_dim(model.sde, model, model.codec, x, config.data.transform(),
                               generator=torch.Generator().manual_seed(0), **options)  # fmt: skip
    assert math.isfinite(got.bpd) and got.bpd == want.bpd and got.terms == want.terms
    assert run_bound(*load_score_model(tmp_path / "run" / "ae")[:2], tmp_path / "run" / "ae", x) is None
    drawn = sample_run(model, config.data, tmp_path / "run", (4, *model.latent_shape), Recipe("ddim", 3), seed=1)
    direct = sample(
        model.sde, model, (4, *model.latent_shape), "ddim", steps=3, generator=torch.Generator().manual_seed(1)
    )
    assert torch.equal(drawn.x, direct.x) and drawn.decoded.shape == (4, 1, 8, 8) and drawn.nfe == direct.nfe == 4


def test_a_run_that_distils_nothing_resumes_across_a_changed_distill_default():
    """A score run never reads its ``distill`` section: a default changed there since its checkpoint was written
    (flow maps' times and weight did) does not stop its resume; a flow-map run, whose objective reads them, is
    refused, naming the field."""
    from scoresde.config import override
    from scoresde.training.steps import config_changes

    score = preset("digits-ddpm")
    assert config_changes(score, override(score, "distill.flow_times=logit_normal", "distill.flow_adaptive_p=1")) == []
    assert config_changes(score, override(score, "train.lr=0.5")) == ["train.lr"]
    flow = preset("toy-vp-flow-map")
    assert config_changes(flow, override(flow, "distill.flow_times=logit_normal")) == ["distill.flow_times"]
