"""Faults a cluster and a careless user bring: no user file lost, no run lost, no traceback.

Each test is one item of the fault battery (issue 17): files a user wrote, signals during the interrupt save,
resume after kills (before the first checkpoint, without config.yaml, during a checkpoint write), checkpoints not to
be trusted, write failures, bad inputs, leftovers, two trainers on one folder, types and edges. The CLI is driven
in-process where that is enough (an escaping exception fails the test) and as a subprocess where the process
itself matters (signals, the lock, tracebacks)."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY, one_line, rewrite_checkpoint, tiny_toy, train_cli

from scoresde import VPSDE, GaussianMixture, log_likelihood, sample
from scoresde._io import json_text
from scoresde._stats import mean_and_standard_error
from scoresde.app.cli import main
from scoresde.config.io import save_config
from scoresde.config.presets import preset
from scoresde.config.schema import ConfigError, override
from scoresde.evaluation.metrics import mmd
from scoresde.training.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from scoresde.training.run_folder import LOCK_FILE, RunFolderError, RunLock, truncate_log
from scoresde.training.runs import load_score_model
from scoresde.training.trainer import Trainer


# 1. user files ---------------------------------------------------------------------------------------------------
def test_train_never_changes_user_files_without_force(tmp_path, capsys):
    folder = tmp_path / "d"
    folder.mkdir()
    mine = {"config.yaml": "keep\n", "evals.csv": "x\n", "notes.txt": "mine\n"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    assert train_cli(folder, "--steps", "3") == 2
    one_line(capsys, "config.yaml already exists; pass --resume to continue the run")
    assert {p.name: p.read_text() for p in folder.iterdir()} == mine
    assert train_cli(folder, "--steps", "3", "--resume") == 2  # not a run this trainer resumes: a bad config.yaml
    one_line(capsys, "config.yaml")
    assert {p.name: p.read_text() for p in folder.iterdir()} == mine
    assert main(["train", "--out", "", "--steps", "3"]) == 2
    one_line(capsys, "--out is empty")
    assert train_cli(folder, "--steps", "3", "--force") == 0  # --force replaces the run's files and nothing else
    capsys.readouterr()
    assert (folder / "notes.txt").read_text() == "mine\n" and not (folder / "evals.csv").exists()
    assert load_checkpoint(folder)["step"] == 3 and (folder / "config.yaml").read_text() != "keep\n"
    assert not (folder / LOCK_FILE).exists()


def test_a_failed_train_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "new"
    assert main(["train", "--out", str(out), "--preset", "mnist-ddpm"]) == 2  # no MNIST files here
    one_line(capsys, "MNIST")
    assert not out.exists()


# 2. signals -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_second_signal_during_the_interrupt_save_keeps_that_checkpoint(tmp_path, signum):
    """The first signal stops training at step 3, before any regular checkpoint; a second one arrives while the
    interrupt's checkpoint is being written: it is absorbed and the checkpoint of step 3 is on disk."""
    trainer = Trainer(tiny_toy(1000, "train.checkpoint_every=500"), tmp_path, progress=False)
    train_step, save = trainer._train_step, trainer.save

    def step_then_signal():
        loss = train_step()
        if trainer.step == 2:
            os.kill(os.getpid(), signum)
        return loss

    def save_under_a_second_signal():
        os.kill(os.getpid(), signum)  # Python runs the handler here, in the middle of the save
        return save()

    trainer._train_step, trainer.save = step_then_signal, save_under_a_second_signal
    result = trainer.train()
    assert result.interrupted and result.step == 3 and load_checkpoint(tmp_path)["step"] == 3


def test_ctrl_c_during_start_up_exits_130_in_one_line(tmp_path):
    """SIGINT while the command is still importing torch (or building the trainer): status 130, no traceback."""
    for delay in (0.3, 1.5):
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys, scoresde_cli; sys.exit(scoresde_cli.main())", "train"]
            + ["--out", str(tmp_path / f"run{delay}"), "--steps", "100000", "--json"],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            proc.kill()  # a lost signal must not leave a 100,000-step run behind
        assert proc.returncode == 130 and "Traceback" not in err and err.strip().count("\n") == 0, err


# 3. resume after kills ----------------------------------------------------------------------------------------------
def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_at_step_0(tmp_path, capsys):
    config = tiny_toy(4, "train.seed=3")
    tmp_path.mkdir(exist_ok=True)
    save_config(config, tmp_path / "config.yaml")  # what the run had written when it was killed
    (tmp_path / "metrics.csv").write_text("step,loss,lr,seconds\n1,0.9,0.001,0.1\n2,0.8")  # a row cut short
    assert main(["train", "--out", str(tmp_path), "--resume", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "holds no checkpoint yet" in err and err.strip().count("\n") == 0
    assert json.loads(out)["config"] == config.to_dict() and load_checkpoint(tmp_path)["step"] == 4
    assert [row.split(",")[0] for row in (tmp_path / "metrics.csv").read_text().split()[1:]] == ["1", "2", "3", "4"]


def test_resume_without_config_yaml_uses_the_checkpoints_config(tmp_path, capsys):
    assert train_cli(tmp_path, "--steps", "3", "--seed", "5") == 0
    capsys.readouterr()
    (tmp_path / "config.yaml").unlink()
    assert main(["train", "--out", str(tmp_path), "--resume", "--steps", "5", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "config.yaml is missing: resuming with the config the checkpoint carries" in err
    config = json.loads(out)["config"]
    assert config["train"]["steps"] == 5 and config["train"]["seed"] == 5 and config["model"]["kwargs"]["width"] == 16


@pytest.mark.slow  # three training processes and a watcher spinning on the file system: 12 s of the default tier
def test_a_kill_during_a_checkpoint_write_resumes_bit_exactly(tmp_path):
    """SIGKILL while the second checkpoint is being written (its temporary file seen on disk): the first checkpoint
    loads, the resumed run ends with the weights of an uninterrupted run, no temporary is left, no log row repeats."""
    args = ["train", *TINY, "--set", "model.kwargs.width=256", "--set", "train.checkpoint_every=4", "--steps", "12"]
    command = [sys.executable, "-m", "scoresde", *args, "--set", "train.log_every=1", "--json"]
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command, "--out", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    temporary, seen = killed / f".{CHECKPOINT}.tmp-{proc.pid}", 0
    while proc.poll() is None:
        if temporary.exists():
            seen += 1
            if seen == 2:  # the second write: a checkpoint of step 4 is already there
                proc.kill()
                break
            while temporary.exists():
                pass
    proc.wait()
    assert seen == 2, "the run ended before its second checkpoint write was seen"
    # under load the watcher can miss a whole write (the step-4 one): the kill then lands in the step-12 write, with
    # the step-8 checkpoint on disk; either way a write was cut short and the last whole checkpoint must load
    assert load_checkpoint(killed)["step"] in (4, 8)
    subprocess.run([*command, "--out", str(killed), "--resume"], check=True, capture_output=True)
    whole, resumed = load_checkpoint(tmp_path / "whole"), load_checkpoint(killed)
    assert resumed["step"] == 12
    assert all(torch.equal(whole["model"][k], resumed["model"][k]) for k in whole["model"])
    assert all(torch.equal(whole["ema"][k], resumed["ema"][k]) for k in whole["ema"])
    assert sorted(p.name for p in killed.iterdir() if p.name.startswith(".")) == []
    steps = [int(row.split(",")[0]) for row in (killed / "metrics.csv").read_text().split()[1:]]
    assert steps == list(range(1, 13))


# 4. checkpoints not to be trusted -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t, m: t.update({k: torch.full_like(v, float("nan")) for k, v in t.items() if k.startswith("ema.")}),
            "holds non-finite ema weights",
        ),
        (lambda t, m: [t.pop(k) for k in [k for k in t if k.startswith("optim.")]], "holds no optimizer state"),
        (lambda t, m: m.update(step="-5"), "step -5 < 0"),
        (lambda t, m: t.update({"model.extra": torch.zeros(3), "ema.extra": torch.zeros(3)}), "unexpected extra"),
        (lambda t, m: t.pop(next(k for k in t if k.startswith("ema."))), "the ema weights do not fit"),
        (
            lambda t, m: t.update({k: torch.zeros(7) for k in list(t) if k.startswith(("model.", "ema."))}),
            "wrong shape",
        ),
    ],
    ids=["nan-ema", "no-optimizer", "negative-step", "extra", "missing", "wrong-shape"],
)
def test_resume_and_loading_refuse_untrustworthy_checkpoints(tmp_path, capsys, edit, message):
    assert train_cli(tmp_path, "--steps", "2") == 0
    capsys.readouterr()
    rewrite_checkpoint(tmp_path / CHECKPOINT, edit)
    before = (tmp_path / CHECKPOINT).read_bytes()
    assert main(["train", "--out", str(tmp_path), "--resume", "--steps", "4"]) == 2
    one_line(capsys, message)
    assert (tmp_path / CHECKPOINT).read_bytes() == before
    if message != "holds no optimizer state":  # sampling needs no optimizer state
        with pytest.raises(CheckpointError, match=message.split("(")[0]):
            load_score_model(tmp_path)
        assert main(["sample", "--checkpoint", str(tmp_path), "-n", "4", "--out", str(tmp_path / "s.npz")]) == 2
        one_line(capsys, message.split("(")[0])


# 5. write failures and bad inputs -----------------------------------------------------------------------------------
def test_a_write_failure_during_training_is_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys, monkeypatch):
    """Disk full at the second checkpoint (the flush fails): exit 2 in one line, the step-2 checkpoint intact."""
    fsync, calls = os.fsync, []

    def disk_full_on_the_second_checkpoint(fd):
        calls.append(fd)
        if len(calls) == 5:  # config.yaml and its folder, checkpoint 1 and its folder, then checkpoint 2
            raise OSError(errno.ENOSPC, "No space left on device")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", disk_full_on_the_second_checkpoint)
    assert train_cli(tmp_path, "--steps", "6", "--set", "train.checkpoint_every=2") == 2
    monkeypatch.undo()
    one_line(capsys, "(No space left on device); the checkpoint of step 2 is kept")
    assert load_checkpoint(tmp_path)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reliability") / "run"
    assert main(["train", "--out", str(folder), *TINY, "--steps", "2", "--json"]) == 0
    return folder


@pytest.mark.parametrize("kind", ["empty", "truncated", "scalar", "zero-rows", "bare-npy", "strings"])
def test_bad_npz_inputs_are_one_line_errors(toy_run, tmp_path, capsys, kind):
    path = tmp_path / "bad.npz"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        np.savez(path, x=np.zeros((50, 2)))
        path.write_bytes(path.read_bytes()[:100])
    elif kind == "scalar":
        np.savez(path, x=np.float64(3.0))
    elif kind == "zero-rows":
        np.savez(path, x=np.zeros((0, 2)))
    elif kind == "bare-npy":
        with open(path, "wb") as fh:
            np.save(fh, np.zeros((4, 2)))
    else:
        np.savez(path, x=np.array(["a", "b"]))
    out = tmp_path / "o"
    for command in (
        ["likelihood", "--checkpoint", str(toy_run), "--data", str(path), "--out", str(out / "l.json")],
        ["inpaint", "--checkpoint", str(toy_run), "--image", str(path), "--mask", "x1", "--out", str(out / "i.npz")],
    ):
        assert main(command) == 2, command
        one_line(capsys, str(path))
    assert not out.exists()


@pytest.mark.parametrize("device", ["meta", "xpu", "cuda:7"])
def test_unusable_devices_are_one_line_errors(tmp_path, capsys, device):
    assert train_cli(tmp_path / "run", "--steps", "2", "--device", device) == 2
    one_line(capsys, f"--device {device}")
    assert not (tmp_path / "run").exists()


# 6. leftovers -------------------------------------------------------------------------------------------------------
def test_resume_removes_stale_temporaries_and_repeated_log_rows(tmp_path, capsys):
    assert train_cli(tmp_path, "--steps", "4", "--set", "train.log_every=1") == 0
    capsys.readouterr()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stale = [
            tmp_path / f".{CHECKPOINT}.tmp-{2**22 + 12345}",
            tmp_path / ".tmpAb3xY9",
            tmp_path / f".{CHECKPOINT}.tmp-{os.getpid()}",
        ]
        kept = tmp_path / f".{CHECKPOINT}.tmp-{live.pid}"  # a live writer's file is not ours to remove
        for path in [*stale, kept]:
            path.write_bytes(b"partial")
        with (tmp_path / "metrics.csv").open("a") as fh:  # rows a killed run logged after its checkpoint
            fh.write("5,0.5,0.001,1.0\n6,0.5,0.001,1.0\n7,0.")
        assert main(["train", "--out", str(tmp_path), "--resume", "--steps", "6", "--json"]) == 0  # log_every=1 kept
        assert not any(p.exists() for p in stale) and kept.exists()
    finally:
        live.kill()
        live.wait()
    steps = [int(row.split(",")[0]) for row in (tmp_path / "metrics.csv").read_text().split()[1:]]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_truncate_log_keeps_rows_up_to_the_step_and_drops_a_cut_row(tmp_path):
    log = tmp_path / "metrics.csv"
    log.write_text("step,loss\n1,0.5\n2,0.4\n3,0.3\n4,0.")
    assert truncate_log(log, 2) == 2 and log.read_text().split() == ["step,loss", "1,0.5", "2,0.4"]
    assert truncate_log(tmp_path / "none.csv", 2) == 0


def test_checkpoints_are_readable_by_the_group_as_the_umask_allows(tmp_path):
    old = os.umask(0o022)
    try:
        Trainer(tiny_toy(2), tmp_path, progress=False).train()
    finally:
        os.umask(old)
    assert (tmp_path / CHECKPOINT).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "config.yaml").stat().st_mode & 0o777 == 0o644


# 7. one trainer per folder ------------------------------------------------------------------------------------------
def test_a_second_trainer_is_refused_while_the_first_holds_the_folder(tmp_path, capsys):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from scoresde.training.run_folder import RunLock\n"
            "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(120)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert train_cli(tmp_path, "--steps", "2") == 2
        one_line(capsys, f"is in use by another training process (pid {holder.pid})")
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]
        with pytest.raises(RunFolderError, match="in use"):
            Trainer(tiny_toy(2), tmp_path, progress=False).train()
    finally:
        holder.kill()
        holder.wait()
    assert train_cli(tmp_path, "--steps", "2") == 0  # the dead owner's lock is taken over
    assert load_checkpoint(tmp_path)["step"] == 2 and not (tmp_path / LOCK_FILE).exists()


def test_the_lock_is_exclusive_within_one_process_too(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        with pytest.raises(RunFolderError, match=f"pid {os.getpid()}"), RunLock(tmp_path):
            pass
    with RunLock(tmp_path):  # released: taken again
        pass


# 8. types and edges -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "assignment, message",
    [
        ("train.steps=true", "'train.steps': must be an integer, got True"),
        ("sde.beta_max=inf", "'sde.beta_max': must be a finite number, got inf"),
        ("data.dequantize=3", "'data.dequantize': must be true or false"),
        ("train.lr=[1", "not valid YAML"),
    ],
)
def test_config_types_are_checked(assignment, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        override(preset("toy-vp"), assignment)
    assert main(["train", "--out", str(tmp_path / "o"), "--set", assignment]) == 2
    one_line(capsys, message)


def test_library_edges_raise_errors_naming_the_argument():
    trainer_config = tiny_toy(2)
    with pytest.raises(ValueError, match="steps must be an integer >= 1, got -5"):
        Trainer(trainer_config, Path("unused-never-written"), progress=False).train(steps=-5)
    assert not Path("unused-never-written").exists()
    sde = VPSDE()
    mixture = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]])
    score = mixture.score_fn(sde)
    with pytest.raises(TypeError, match="dtype must be a floating-point torch.dtype"):
        sample(sde, score, (4, 2), "ddim", steps=2, dtype=torch.int64)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sample(sde, score, (4, 2), "ddim", steps=2, generator=5)
    with pytest.raises(ValueError, match="bandwidths must be positive"):
        mmd(torch.zeros(4, 2), torch.ones(4, 2), bandwidths=[-1])
    with pytest.raises(ValueError, match="values is empty"):
        mean_and_standard_error(torch.zeros(0))
    with pytest.raises(ValueError, match=r"with B >= 1 and at least 2 dimensions, got \(0, 2\)"):
        log_likelihood(sde, score, torch.zeros(0, 2))
    with pytest.raises(ValueError, match="(is not|non-)finite"):
        log_likelihood(sde, score, torch.full((2, 2), 1e30))  # float32: |x|^2 overflows
    assert json.loads(json_text({"a": float("nan"), "b": [float("inf"), 1.0]})) == {"a": None, "b": [None, 1.0]}


def test_compare_with_one_sample_is_refused(toy_run, tmp_path, capsys):
    assert main(["compare", "--checkpoint", str(toy_run), "-n", "1", "--out", str(tmp_path / "c")]) == 2
    one_line(capsys, "-n must be >= 2")


# 9. smaller ---------------------------------------------------------------------------------------------------------
def test_argparse_and_yaml_errors_are_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["train"])
    assert stop.value.code == 2
    one_line(capsys, "the following arguments are required: --out")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  steps: [1, 2\n  lr: 3\n")
    assert main(["train", "--out", str(tmp_path / "o"), "--config", str(bad)]) == 2
    one_line(capsys, "is not valid YAML")


# kept under test: pickle payloads never run --------------------------------------------------------------------
class _Payload:
    """Pickles to a call that creates ``marker`` when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickle_payloads_in_configs_data_and_checkpoints_never_run(toy_run, tmp_path, capsys):
    import pickle

    import yaml

    marker = tmp_path / "payload-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"train: !!python/object/apply:os.mkdir ['{marker}']\n")
    data = tmp_path / "evil.npz"
    np.savez(data, x=np.array([_Payload(marker)], dtype=object))
    checkpoint = tmp_path / "evil.safetensors"
    checkpoint.write_bytes(pickle.dumps(_Payload(marker)))
    assert main(["train", "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    one_line(capsys, str(config))
    assert (
        main(["likelihood", "--checkpoint", str(toy_run), "--data", str(data), "--out", str(tmp_path / "l.json")]) == 2
    )
    one_line(capsys, str(data))
    assert main(["sample", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "s.npz")]) == 2
    one_line(capsys, "not a readable checkpoint")
    assert not marker.exists()
    yaml.unsafe_load(config.read_text())  # the positive control: the payload is live
    assert marker.exists()
    marker.rmdir()
    np.load(data, allow_pickle=True)["x"]
    assert marker.exists()
