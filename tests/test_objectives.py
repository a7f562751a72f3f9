"""Objectives as objects: the run's config picks one by name, the Trainer runs whatever it is handed (a custom
objective's loss is what it minimises), and an objective's state goes through the checkpoint and back."""

from __future__ import annotations

import pytest
import torch

from scoresde.config import override, preset
from scoresde.models import ModelSpec
from scoresde.training import Trainer
from scoresde.training.objectives import (
    ConsistencyDistillation,
    DenoisingScoreMatching,
    HybridObjective,
    Objective,
    build_objective,
    objective_name,
    objectives,
)

SMALL = ("train.steps=6", "train.batch_size=32", "train.log_every=1", "train.checkpoint_every=3")


def test_the_config_names_its_objective():
    assert objectives() == [
        "autoencoder",
        "consistency",
        "consistency_training",
        "dsm",
        "flow_map",
        "flow_map_training",
        "hybrid",
        "progressive",
        "super_resolution",
    ]
    sde = preset("toy-vp").sde.build()
    assert objective_name(preset("toy-vp")) == "dsm"
    assert objective_name(preset("mnist-autoencoder")) == "autoencoder"
    assert objective_name(preset("mnist-cascade")) == "super_resolution"
    assert objective_name(preset("mnist-latent")) == objective_name(preset("mnist-cascade-base")) == "dsm"
    assert isinstance(build_objective(preset("toy-vp"), sde), DenoisingScoreMatching)
    assert isinstance(build_objective(preset("toy-vp-learned-var"), sde), HybridObjective)
    cd = override(
        preset("toy-vp"), "kind=consistency", "distill.method=consistency", "distill.teacher=oracle:8gaussians"
    )
    with pytest.raises(ValueError, match="the consistency objective needs a teacher"):
        build_objective(cd, sde)
    assert isinstance(build_objective(cd, sde, teacher=lambda x, t: -x), ConsistencyDistillation)

    class EpsTeacher:  # N(0, I) data under VP: eps = sigma x, the score -x
        spec = ModelSpec(output="eps")

        def __call__(self, x, t):
            return sde.sigma(t)[:, None] * x

    x, t = torch.randn(4, 2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64)
    converted = build_objective(cd, sde, teacher=EpsTeacher()).teacher_fn
    torch.testing.assert_close(converted(x, t), -x)  # converted at the objective's boundary
    student = ModelSpec(output="consistency")
    with pytest.raises(ValueError, match="the consistency objective's teacher needs a score model"):
        build_objective(cd, sde, teacher=type("Student", (), {"spec": student, "__call__": lambda s, x, t: x})())


class PullToTarget(Objective):
    """A custom objective: the squared distance of the model's output at t = 0.5 to a fixed target, with a counter
    kept as state (saved and restored through the checkpoint)."""

    def __init__(self):
        self.calls = torch.zeros(())

    def __call__(self, model, batch, generator):
        self.calls += 1
        t = torch.full((batch.x0.shape[0],), 0.5)
        return (model(batch.x0, t) - 3.0).pow(2).mean()

    def state_dict(self):
        return {"calls": self.calls.clone()}

    def load_state_dict(self, state, path):
        self.calls = state["calls"].clone()


def test_the_trainer_minimises_whatever_objective_it_is_handed(tmp_path):
    config = override(preset("toy-vp"), *SMALL, "train.steps=200", "train.lr=0.01", "train.checkpoint_every=0")
    trainer = Trainer(config, tmp_path / "run", progress=False, objective=PullToTarget())
    result = trainer.train()
    trainer.close()
    x = torch.randn(256, 2)
    out = trainer.model(x, torch.full((256,), 0.5))
    assert result.step == 200 and float((out - 3.0).abs().mean()) < 0.3  # from about 3 at the initialisation
    assert float(trainer.objective.calls) == 200


def test_an_objectives_state_is_saved_and_restored(tmp_path):
    config = override(preset("toy-vp"), *SMALL)
    first = Trainer(config, tmp_path / "run", progress=False, objective=PullToTarget())
    first.train(3)
    first.close()
    resumed = Trainer(config, tmp_path / "run", progress=False, objective=PullToTarget())
    assert resumed.step == 3 and float(resumed.objective.calls) == 3
    resumed.train()
    resumed.close()
    assert float(resumed.objective.calls) == 6
