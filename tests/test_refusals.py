"""The third fault pass (issue 30): no run started by accident, no solve that runs for minutes to end in a traceback,
every artefact checked against its model, and the smaller leaks. Each test failed on the main before it.

The CLI is driven in-process where that is enough and as a subprocess where the process itself matters (signals)."""

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

from scoresde import VPSDE, log_likelihood, toy_dataset
from scoresde.app.cli import main
from scoresde.likelihood.exponential_integrator import SolverError, step_budget
from scoresde.processes.artefacts import belongs_to, model_fingerprint
from scoresde.samplers import GridFit
from scoresde.samplers.grid_fit import fit_grid
from scoresde.training.checkpoint import CHECKPOINT, load_checkpoint
from scoresde.training.distill import distillation_config
from scoresde.training.run_folder import LOCK_FILE, RunLock
from scoresde.training.runs import load_score_model, run_score_moments
from scoresde.training.trainer import Trainer


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 4-step toy run (VP) with a checkpoint: the model the artefacts and the edits below start from."""
    folder = tmp_path_factory.mktemp("refusals") / "run"
    assert train_cli(folder, "--steps", "4") == 0
    return folder


def status(args: list[str]) -> int:
    """The exit status of the command line on ``args`` (argparse's refusals exit while parsing)."""
    try:
        return main(args)
    except SystemExit as stop:
        return stop.code


def _copy(run: Path, to: Path) -> Path:
    to.mkdir()
    for name in ("checkpoint.safetensors", "config.yaml"):
        (to / name).write_bytes((run / name).read_bytes())
    return to


# 1. --resume with nothing to resume ---------------------------------------------------------------------------------
@pytest.mark.parametrize("folder", ["missing", "empty", "user-files", "a-file"])
def test_resume_with_nothing_to_resume_and_no_preset_is_refused(tmp_path, capsys, folder):
    out = tmp_path / "out"
    if folder == "empty":
        out.mkdir()
    elif folder == "user-files":
        out.mkdir()
        (out / "notes.txt").write_text("mine\n")
    elif folder == "a-file":
        out.write_text("mine\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert train_cli(out, "--resume", "--steps", "20") == 2
    one_line(capsys, f"--resume: {out} ")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing started, nothing written


def test_resume_with_a_preset_and_nothing_to_resume_starts_it_and_says_so(tmp_path, capsys):
    """A requeued job passes its whole command line again: with a preset, the first attempt starts the run."""
    assert train_cli(tmp_path / "new", "--resume", "--preset", "toy-vp", "--steps", "2") == 0
    assert "holds no run yet: starting the --preset toy-vp run there at step 0" in capsys.readouterr().err
    assert load_checkpoint(tmp_path / "new")["step"] == 2


def test_distill_resume_into_a_missing_folder_says_it_starts(tmp_path, capsys):
    args = ["distill", "--teacher", "oracle:gmm", "--method", "consistency", "--train-steps", "2", "--json"]
    assert main([*args, "--out", str(tmp_path / "student"), "--resume"]) == 0
    assert "holds no distillation yet: starting this one there at step 0" in capsys.readouterr().err


# 2. a likelihood that cannot finish says so at once -----------------------------------------------------------------
def _overflowing(run: Path, to: Path, factor: float) -> Path:
    """A copy of ``run`` whose EMA weights are multiplied by ``factor`` (finite, but the outputs overflow)."""
    folder = _copy(run, to)
    rewrite_checkpoint(
        folder / CHECKPOINT, lambda t, m: t.update({k: v * factor for k, v in t.items() if k.startswith("ema.")})
    )
    return folder


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["non-finite", "finite-but-huge"])
def test_a_likelihood_of_an_overflowing_model_fails_within_a_few_evaluations(run, tmp_path, dtype):
    """float32: the scores are NaN (the first evaluation says so); float64: finite but ~1e30, the step size collapses.
    Either way the error names a sample and a time within 200 evaluations (it took 100,000 steps before)."""
    model = load_score_model(_overflowing(run, tmp_path / "big", 1e18))[0].to(dtype)
    calls = []

    def counted(x, t):
        calls.append(1)
        return model(x, t)

    counted.spec = model.spec
    x = torch.randn(6, 2, dtype=dtype, generator=torch.Generator().manual_seed(0))
    with pytest.raises((SolverError, ValueError), match=r"(sample \d, t=|non-finite values .* at t=)"):
        log_likelihood(model.sde, counted, x)
    assert len(calls) < 200


def test_the_likelihood_command_refuses_an_overflowing_model_in_one_line(run, tmp_path, capsys):
    big = _overflowing(run, tmp_path / "big", 1e18)
    assert main(["likelihood", "--checkpoint", str(big), "-n", "20", "--out", str(tmp_path / "l.json")]) == 2
    one_line(capsys, "the likelihood cannot be computed (sample ")
    assert not (tmp_path / "l.json").exists()


def test_the_step_budget_is_proportionate_to_the_span_and_the_tolerance():
    assert step_budget(11.0, 1e-5, 1e-5, 3) == pytest.approx(30 * 11 * 1e-5**-0.25, abs=1)  # 5,866: 20x a smooth solve
    assert step_budget(11.0, 1e-7, 1e-5, 3) > step_budget(11.0, 1e-5, 1e-5, 3) > step_budget(1.0, 1e-5, 1e-5, 3)
    assert step_budget(1.0, 1e-2, 1e-2, 3) == 1000  # never below 1,000
    mix, sde = toy_dataset("gmm").mixture, VPSDE()
    x = mix.sample(4, torch.Generator().manual_seed(0), dtype=torch.float64)
    with pytest.raises(SolverError, match="spent its 20 steps") as caught:
        log_likelihood(sde, mix.score_fn(sde), x, rtol=1e-12, atol=1e-12, max_steps=20, fallback=None)
    assert 0 < caught.value.t < 1


# 3. zero counts -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--train-steps", "--student-steps", "--teacher-steps"])
def test_distill_refuses_zero_and_negative_counts(tmp_path, capsys, option):
    args = ["distill", "--teacher", "oracle:gmm", "--method", "progressive", "--out", str(tmp_path / "s")]
    for value in ("0", "-3"):
        assert status([*args, option, value]) == 2
        one_line(capsys, f"argument {option}: must be an integer >= 1, got {value}")
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="train_steps must be an integer >= 1, got 0"):
        distillation_config("oracle:gmm", "consistency", train_steps=0)


# 4. optimizer state -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda v: v[:1], "optim.0.exp_avg (of net.time.mlp.0.weight) has shape (1, 64)"),
        (lambda v: v * float("nan"), "optim.0.exp_avg_sq (of net.time.mlp.0.weight) holds non-finite values"),
        (lambda v: -v - 1, "optim.0.exp_avg_sq (of net.time.mlp.0.weight) holds negative second moments"),
    ],
    ids=["shape", "nan", "negative"],
)
def test_resume_checks_the_optimizer_state_tensor_by_tensor(run, tmp_path, capsys, edit, message):
    folder = _copy(run, tmp_path / "run")
    key = "optim.0.exp_avg" if "exp_avg " in message else "optim.0.exp_avg_sq"
    rewrite_checkpoint(folder / CHECKPOINT, lambda t, m: t.update({key: edit(t[key])}))
    before = (folder / CHECKPOINT).read_bytes()
    assert main(["train", "--out", str(folder), "--resume", "--steps", "8", "--json"]) == 2
    one_line(capsys, message)
    assert (folder / CHECKPOINT).read_bytes() == before


# 4b. a checkpoint is one artefact: every reader checks it whole -----------------------------------------------------
def _drop_model_key(tensors: dict, metadata: dict) -> None:
    del tensors["model.net.time.mlp.0.weight"]


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t, m: t.update({"model.net.time.mlp.0.weight": t["model.net.time.mlp.0.weight"][:1]}),
         "the model weights do not fit the network its config builds (wrong shape: net.time.mlp.0.weight (1, "),
        (lambda t, m: t.update({"optim.0.exp_avg": t["optim.0.exp_avg"][:1]}),
         "optim.0.exp_avg (of net.time.mlp.0.weight) has shape (1, 64)"),
        (_drop_model_key, "the model weights do not fit the network its config builds (missing net.time.mlp.0.weight)"),
        (lambda t, m: t.update({k: v.double() for k, v in t.items() if k.startswith("ema.")}),
         "the ema weights do not fit the network its config builds (wrong dtype: "),
    ],
    ids=["model-shape", "optimizer-shape", "model-key", "float64-ema"],
)  # fmt: skip
def test_sample_likelihood_and_resume_check_the_whole_checkpoint(run, tmp_path, capsys, edit, message):
    """`sample` and `likelihood` read only the EMA weights, yet refuse a file that `train --resume` refuses (they
    exited 0 on all four): one line naming the tensor, exit 2, nothing written."""
    folder = _copy(run, tmp_path / "run")
    rewrite_checkpoint(folder / CHECKPOINT, edit)
    before = (folder / CHECKPOINT).read_bytes()
    out = tmp_path / "out.npz"
    for args in (
        ["sample", "--checkpoint", str(folder), "-n", "4", "--steps", "2", "--out", str(out)],
        ["likelihood", "--checkpoint", str(folder), "-n", "4", "--out", str(tmp_path / "nll")],
        ["train", "--out", str(folder), "--resume", "--steps", "8"],
    ):
        assert main([*args, "--json"]) == 2, args
        one_line(capsys, message)
    assert (folder / CHECKPOINT).read_bytes() == before and not out.exists() and not (tmp_path / "nll").exists()


def test_resume_refuses_finite_but_overflowing_ema_weights(run, tmp_path, capsys):
    big = _overflowing(run, tmp_path / "big", 1e18)
    assert main(["train", "--out", str(big), "--resume", "--steps", "8", "--json"]) == 2
    one_line(capsys, "holds ema weights that are finite but overflow")


# 6. artefacts belong to a model -------------------------------------------------------------------------------------
def test_a_grid_is_refused_for_another_sde_another_model_or_an_edited_sampler(run, tmp_path, capsys):
    vp, _, _ = load_score_model(run)
    fit = fit_grid(vp.sde, vp, "dpm_solver", 3, (1, 2), n=32, iterations=3, dtype=torch.float32)
    path = fit.save(tmp_path / "grid.json")
    assert GridFit.load(path, vp.sde, vp).steps == 3  # its own model
    assert fit.settings["belongs_to"] == belongs_to(vp.sde, vp) and len(model_fingerprint(vp)) == 16
    ve_run = tmp_path / "ve"
    assert train_cli(ve_run, "--preset", "toy-ve", "--steps", "2") == 0
    ve = load_score_model(ve_run)[0]
    with pytest.raises(ValueError, match="is a grid for another forward SDE: VPSDE.*not this one's VESDE"):
        GridFit.load(path, ve.sde, ve)
    retrained = _copy(run, tmp_path / "more")
    assert main(["train", "--out", str(retrained), "--resume", "--steps", "6", "--json"]) == 0
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"another model \(its weights differ\)"):
        GridFit.load(path, vp.sde, load_score_model(retrained)[0])
    record = json.loads(path.read_text())
    for sampler in ("pc", None):
        (tmp_path / "edited.json").write_text(json.dumps({**record, "sampler": sampler}))
        with pytest.raises(ValueError, match=f"names sampler {sampler!r}, whose grid scoresde fit-grid does not fit"):
            GridFit.load(tmp_path / "edited.json")
    (tmp_path / "old.json").write_text(json.dumps({k: v for k, v in record.items() if k != "belongs_to"}))
    with pytest.raises(ValueError, match="records no model it belongs to"):
        GridFit.load(tmp_path / "old.json", vp.sde, vp)
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(ve_run), "--grid", str(path), "-n", "4", "--out", str(out)]) == 2
    one_line(capsys, "is a grid for another forward SDE")
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sampler", "pc"], "fit-grid fits the grid of a few-step solver, not of sampler 'pc'"),
        (["--iterations", "0"], "argument --iterations: must be an integer >= 1, got 0"),
        (["--sampler", "ddim", "--option", "eta=1"], "a stochastic solve (ddim eta=1) has no trajectory to match"),
    ],
    ids=["pc", "iterations-0", "stochastic"],
)
def test_fit_grid_refuses_what_it_cannot_fit(run, tmp_path, capsys, args, message):
    out = tmp_path / "grids" / "g.json"
    assert status(["fit-grid", "--checkpoint", str(run), "--steps", "3", "-n", "16", "--out", str(out), *args]) == 2
    one_line(capsys, message)
    assert not out.exists()


def test_a_cached_moments_table_is_recomputed_for_another_model(run, tmp_path, capsys):
    folder = _copy(run, tmp_path / "run")
    model, config, _ = load_score_model(folder)
    grid = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)
    first = run_score_moments(folder, model, model.sde, config.data, grid, "k")
    assert first.belongs_to == belongs_to(model.sde, model, config.data.name)
    assert torch.equal(run_score_moments(folder, model, model.sde, config.data, grid, "k").gamma, first.gamma)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.5)  # another model: the table cached for the first one must not be reused
    second = run_score_moments(folder, model, model.sde, config.data, grid, "k")
    assert not torch.equal(second.gamma, first.gamma) and second.belongs_to["model"] == model_fingerprint(model)
    assert first.belongs_to["model"] != second.belongs_to["model"]


# 7. two Ctrl-C -------------------------------------------------------------------------------------------------------
def test_a_ctrl_c_inside_an_extension_modules_initialisation_is_an_interrupt(monkeypatch, capsys):
    """A SIGINT while a C extension initialises (matplotlib's ft2font, met in CI during `train`'s start-up) reaches
    Python as "ImportError: initialization failed" caused by the KeyboardInterrupt: one line, exit 130."""

    def import_interrupted(args):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as interrupt:
            raise ImportError("initialization failed") from interrupt

    monkeypatch.setattr("scoresde.app.cli.listing.cmd_list", import_interrupted)
    assert main(["list"]) == 130
    one_line(capsys, "scoresde list: interrupted")

    def import_failed(args):
        raise ImportError("no module named nothing")

    monkeypatch.setattr("scoresde.app.cli.listing.cmd_list", import_failed)
    with pytest.raises(ImportError, match="no module named nothing"):  # a real import error is not hidden
        main(["list"])


def test_a_second_interrupt_during_the_first_ones_clean_up_is_ignored(monkeypatch, capsys):
    """The second SIGINT lands while the first one's KeyboardInterrupt unwinds (a clean-up that takes time)."""

    def interrupted_twice(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the first Ctrl-C raises here
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # the second, 50 ms later, during the clean-up
            time.sleep(0.05)
        return {}

    monkeypatch.setattr("scoresde.app.cli.listing.cmd_list", interrupted_twice)
    previous = signal.getsignal(signal.SIGINT)
    assert main(["list"]) == 130
    one_line(capsys, "scoresde list: interrupted")
    assert signal.getsignal(signal.SIGINT) is previous  # the caller's handler is back


@pytest.mark.parametrize(
    ("signals", "status"),
    [((signal.SIGINT, signal.SIGINT), 130), ((signal.SIGTERM,), 143)],
    ids=["two-ctrl-c-130", "sigterm-143"],
)
def test_a_signal_during_training_exits_128_plus_its_number_without_a_traceback(tmp_path, signals, status):
    """The console script during training: the first SIGINT saves and stops, the second arrives 50 ms later (during
    the save, the report or the interpreter's shutdown): exit 130, no traceback, the checkpoint of the stop kept.
    SIGTERM (a scheduler's stop) saves and stops alike and exits 143 = 128 + 15, which Slurm and shells read."""
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, scoresde_cli; sys.exit(scoresde_cli.main())", "train", "--out", str(out)]
        + ["--preset", "toy-vp", "--steps", "100000", "--set", "train.checkpoint_every=20", *TINY, "--json"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while not (out / CHECKPOINT).exists() and time.time() < deadline:
            time.sleep(0.05)
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status and "Traceback" not in err, err
    assert load_checkpoint(out)["step"] > 0


# 8. bit-reproducible checkpoints ------------------------------------------------------------------------------------
def test_two_identical_runs_write_identical_checkpoint_files(tmp_path):
    for name in ("a", "b"):
        torch.manual_seed(hash(name) % 1000)  # the caller's global RNG differs: the run must not depend on it
        Trainer(tiny_toy(3, "train.checkpoint_every=2"), tmp_path / name, progress=False).train()
    first, second = ((tmp_path / name / CHECKPOINT).read_bytes() for name in ("a", "b"))
    assert first == second
    assert "rng.torch" not in load_checkpoint(tmp_path / "a")["model"] and b"rng.torch" not in first


# 9. the smaller ones ------------------------------------------------------------------------------------------------
def test_an_empty_config_file_is_refused(tmp_path, capsys):
    for text in ("", "# nothing set\n"):
        (tmp_path / "empty.yaml").write_text(text)
        assert train_cli(tmp_path / "out", "--config", str(tmp_path / "empty.yaml")) == 2
        one_line(capsys, "empty.yaml is empty (no section is set)")
    assert not (tmp_path / "out").exists()


def test_a_checkpoint_that_is_a_folder_is_one_line_on_resume(tmp_path, capsys):
    (tmp_path / CHECKPOINT).mkdir()
    assert train_cli(tmp_path, "--resume") == 2
    one_line(capsys, f"{tmp_path / CHECKPOINT} is not a file (a folder?)")


def test_a_complex_npz_is_refused(run, tmp_path, capsys):
    np.savez(tmp_path / "c.npz", x=np.ones((8, 2), dtype=np.complex64))
    args = [
        "likelihood",
        "--checkpoint",
        str(run),
        "--data",
        str(tmp_path / "c.npz"),
        "--out",
        str(tmp_path / "l.json"),
    ]
    assert main(args) == 2
    one_line(capsys, "array 'x' must be real numbers, got dtype complex64")


def test_a_lock_the_folder_no_longer_lets_us_remove_is_named(tmp_path, capsys, monkeypatch):
    """The folder made read-only mid-run: the checkpoint write fails and the lock file cannot be removed; the one
    line says both (as root the permission itself cannot be taken away, so both failures are injected)."""
    unlink = Path.unlink

    def read_only(path, *args, **kwargs):
        if path.name == LOCK_FILE:
            raise PermissionError(13, "Permission denied", str(path))
        return unlink(path, *args, **kwargs)

    def no_write(*args):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "unlink", read_only)
    monkeypatch.setattr("scoresde.training.checkpoint.write_atomic", no_write)
    assert train_cli(tmp_path, "--steps", "4") == 2
    err = one_line(capsys, f"{tmp_path / LOCK_FILE} could not be removed (it holds no lock)")
    assert "Permission denied" in err
    monkeypatch.undo()
    with RunLock(tmp_path):  # the leftover holds no lock: the next run takes the folder
        pass
    assert not (tmp_path / LOCK_FILE).exists()
