"""A run saved by the package before its restructure into layers (commit 495fc7e: a 3-step toy-vp-learned-var run,
kept as a small fixture) loads unchanged: the same config, the same model, the same draws, and it resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from scoresde import load_config, load_score_model, preset, sample
from scoresde.config import override
from scoresde.training import Trainer

RUN = Path(__file__).parent / "fixtures" / "run_before_layers"


def test_an_old_run_loads_and_samples_the_same_draws():
    expected = json.loads((RUN / "expected.json").read_text())
    model, config, step = load_score_model(RUN)
    assert step == expected["step"] == 3 and config == load_config(RUN / "config.yaml")
    assert model.spec.variance  # the variance channel is declared from the saved network
    sde = config.sde.build()
    x = sample(sde, model, (5, 2), "ddpm", steps=4, variance="learned", generator=torch.Generator().manual_seed(0)).x
    torch.testing.assert_close(x, torch.tensor(expected["ddpm_learned_samples"]), rtol=0, atol=0)


def test_an_old_run_resumes_under_the_same_config(tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(RUN, folder)
    config = override(
        preset("toy-vp-learned-var"),
        "train.steps=5",  # a resumed run may train longer
        "train.batch_size=16",
        "model.kwargs.width=16",
        "model.kwargs.depth=1",
        "train.checkpoint_every=3",
        "train.log_every=1",
    )
    trainer = Trainer(config, folder, progress=False)
    try:
        assert trainer.step == 3
        result = trainer.train()
    finally:
        trainer.close()
    assert result.step == 5 and load_score_model(folder)[2] == 5
