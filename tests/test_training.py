"""The trainer: exact resume, atomic and safe checkpoints, divergence, signals, configs, DDP with two processes."""

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from scoresde.config.io import load_config, save_config
from scoresde.config.presets import preset, presets
from scoresde.config.schema import ConfigError, override
from scoresde.training.runs import load_score_model
from scoresde.training.trainer import CheckpointError, Trainer, TrainingDiverged, load_checkpoint

SMALL = (
    "train.batch_size=64",
    "model.kwargs.width=32",
    "model.kwargs.depth=2",
    "train.log_every=10",
    "train.checkpoint_every=0",
    "train.warmup=5",
)


def _toy(steps=20, *extra):
    return override(preset("toy-vp"), f"train.steps={steps}", *SMALL, *extra)


def _weights(module):
    return [p.detach().clone() for p in module.parameters()]


def test_resume_is_exact(tmp_path):
    """40 steps in one run == 20 + 20 with a restart (model, EMA and optimiser restored from the file)."""
    cfg = _toy(40)
    one = Trainer(cfg, tmp_path / "one", progress=False)
    one.train()
    Trainer(cfg, tmp_path / "two", progress=False).train(20)
    resumed = Trainer(cfg, tmp_path / "two", progress=False)
    assert resumed.step == 20
    resumed.train()
    for a, b in zip(
        _weights(one.model) + _weights(one.ema.model), _weights(resumed.model) + _weights(resumed.ema.model)
    ):
        assert torch.equal(a, b)
    assert load_checkpoint(tmp_path / "two")["step"] == 40


def test_image_data_resume_is_exact_across_epochs(tmp_path):
    """Digits with a tiny U-Net: the finite-data path (DistributedSampler epochs, dequantisation) resumes exactly."""
    cfg = override(
        preset("digits-ddpm"),
        "train.steps=6",
        "train.batch_size=512",
        "model.kwargs.ch=8",
        "model.kwargs.groups=4",
        "model.kwargs.num_res_blocks=1",
        "train.checkpoint_every=0",
        "train.log_every=2",
    )
    one = Trainer(cfg, tmp_path / "one", progress=False)
    one.train()
    Trainer(cfg, tmp_path / "two", progress=False).train(3)  # 1438 images / 512 = 2 batches per epoch: crosses epochs
    two = Trainer(cfg, tmp_path / "two", progress=False)
    two.train()
    assert all(torch.equal(a, b) for a, b in zip(_weights(one.model), _weights(two.model)))


def test_training_lowers_the_loss_and_logs(tmp_path):
    # eps: its loss starts at the data's full DSM loss (edm's Gaussian part already removes most of it at step 0)
    cfg = _toy(
        150, "train.weighting=sigma2", "train.importance_sampling=false", "train.lr=3e-3", "model.parameterization=eps"
    )
    trainer = Trainer(cfg, tmp_path, progress=False)
    result = trainer.train()
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,seconds" and len(rows) == 16
    first, last = float(rows[1].split(",")[1]), float(rows[-1].split(",")[1])
    assert last < 0.7 * first, (first, last)
    assert result.step == 150 and result.steps_per_second > 0
    assert load_config(tmp_path / "config.yaml") == cfg


def test_checkpoint_is_atomic_and_safe(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint intact; corrupt and foreign files give clear errors."""
    cfg = _toy(10)
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train()
    good = (tmp_path / "checkpoint.safetensors").read_bytes()

    def disk_full(fd):  # the data is written, flushing it to disk fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(CheckpointError, match=r"No space left on device\); the checkpoint of step 10 is kept"):
        trainer.save()
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == good
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    (tmp_path / "bad.safetensors").write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")
    torch.save({"x": 1}, tmp_path / "pickle.safetensors")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "pickle.safetensors")
    model, config, step = load_score_model(tmp_path)
    assert step == 10 and config == cfg and not model.training


def test_resume_refuses_a_different_config(tmp_path):
    Trainer(_toy(5), tmp_path, progress=False).train()
    with pytest.raises(CheckpointError, match=r"different config \(train.lr\)"):
        Trainer(_toy(5, "train.lr=1e-4"), tmp_path, progress=False)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _toy(30, "train.checkpoint_every=10")
    trainer = Trainer(cfg, tmp_path, progress=False)
    trainer.train(20)
    good = (tmp_path / "checkpoint.safetensors").read_bytes()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(
        TrainingDiverged, match=r"loss became nan at step 20; the last good checkpoint .* \(step 20\) is kept"
    ):
        trainer.train()
    assert (tmp_path / "checkpoint.safetensors").read_bytes() == good


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_saves_a_checkpoint_and_returns(tmp_path, signum):
    """...and puts back the handlers it found (the default ones, or SIG_IGN under nohup)."""
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    cfg = _toy(10_000)
    trainer = Trainer(cfg, tmp_path, progress=False)
    original = trainer._train_step

    def step_then_interrupt():
        loss = original()
        if trainer.step == 6:
            os.kill(os.getpid(), signum)
        return loss

    trainer._train_step = step_then_interrupt
    result = trainer.train()
    assert result.interrupted and result.step == 7
    assert load_checkpoint(tmp_path)["step"] == 7
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_eval_hook_runs_on_the_ema_model_every_eval_every_steps(tmp_path):
    seen = []

    def hook(trainer, step):
        seen.append((step, trainer.score_fn is trainer.ema.model, trainer.score_fn.training))
        return {"ema_norm": float(sum(p.norm() for p in trainer.score_fn.parameters()))}

    trainer = Trainer(_toy(12, "train.eval_every=5"), tmp_path, progress=False, eval_fn=hook)
    trainer.train()
    assert seen == [(5, True, False), (10, True, False)]
    rows = (tmp_path / "evals.csv").read_text().splitlines()
    assert rows[0] == "step,ema_norm" and len(rows) == 3 and [e["step"] for e in trainer.evals] == [5, 10]


def test_configs_presets_and_errors(tmp_path):
    assert {"toy-vp", "toy-ve", "digits-ddpm", "digits-ncsn", "mnist-ddpm", "cifar10-ddpmpp-small"} <= set(presets())
    for name in presets():
        cfg = preset(name)
        for suffix in (".yaml", ".toml"):
            assert load_config(save_config(cfg, tmp_path / f"{name}{suffix}")) == cfg
    cfg = override(preset("toy-vp"), "train.lr=1e-3", "model.kwargs.width=64")
    assert cfg.train.lr == 1e-3 and cfg.model.kwargs["width"] == 64
    for bad, message in [
        ("train.lr=-1", "'train.lr': must be a positive number"),
        ("train.nope=1", "'train.nope': unknown field"),
        ("model.name=resnet", "'model.name': 'resnet' is not one of ddpm_unet, kl_autoencoder, mlp, ncsn"),
        ("train.lr", "must look like section.field=value"),
        ("data.name=mnist", "'data.name': 'mnist' is not a toy data set"),
    ]:
        with pytest.raises(ConfigError, match=message):
            override(cfg, bad)
    (tmp_path / "broken.yaml").write_text("train: [1, 2")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    with pytest.raises(ValueError, match="unknown preset 'toy'"):
        preset("toy")


DDP_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    from scoresde.config import override, preset
    from scoresde.training import Trainer
    torch.set_num_threads(1)
    cfg = override(preset(sys.argv[2]), *sys.argv[3:])
    trainer = Trainer(cfg, sys.argv[1], progress=False)
    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        print("MAXDIFF", max(float((g - gathered[0]).abs().max()) for g in gathered), "STEP", trainer.step)
    trainer.close()
""")


@pytest.mark.parametrize(
    "preset_name, extra",
    [
        pytest.param("toy-vp", ("train.steps=12",) + SMALL, marks=pytest.mark.slow),
        pytest.param(
            "digits-ddpm",
            (
                "train.steps=4",
                "train.batch_size=64",
                "model.kwargs.ch=8",
                "model.kwargs.groups=4",
                "model.kwargs.num_res_blocks=1",
                "train.checkpoint_every=0",
            ),
            marks=pytest.mark.slow,
        ),
    ],
    ids=["toy", "digits"],
)
def test_two_process_ddp_training_keeps_identical_weights(tmp_path, preset_name, extra):
    """torchrun --nproc_per_node=2 on gloo: both ranks hold identical weights; only rank 0 writes."""
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            str(script),
            str(out),
            preset_name,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:  # never leave workers behind, even on a hang
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stderr[-3000:]
    line = next(ln for ln in stdout.splitlines() if ln.startswith("MAXDIFF"))
    assert float(line.split()[1]) == 0.0
    assert load_checkpoint(out)["step"] == int(line.split()[3])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checkpoint.safetensors", "config.yaml", "metrics.csv"], names
    steps, every = load_checkpoint(out)["step"], load_config(out / "config.yaml").train.log_every
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + len(
        {*range(every, steps + 1, every), steps}
    )  # rank 0 only
