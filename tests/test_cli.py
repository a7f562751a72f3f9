"""The command line: files written, one-line errors with exit status 2, nothing overwritten without --force."""

import json
import math
import subprocess
import sys

import torch
from conftest import assert_true_nll_matches_the_entropy

from scoresde import toy_dataset
from scoresde.app.cli import main

TINY_TRAIN = ["--steps", "5", "--set", "model.kwargs.width=16", "--set", "train.batch_size=32"]
"""A run of a few steps of a small network: enough to exercise the commands, not to train."""


def test_toys_writes_figures_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["toys", "gmm", "moons", "--out", str(out), "-n", "200", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (out / "toys.png").stat().st_size > 1000 and (out / "forward.png").stat().st_size > 1000
    assert json.loads((out / "toys.json").read_text()) == summary
    assert summary["toys"]["moons"]["entropy_nats"] is None
    # the reported entropy against a Monte-Carlo estimate -mean log p over fresh draws (4 standard errors)
    nll = -toy_dataset("gmm").log_prob(toy_dataset("gmm").sample(20_000, torch.Generator().manual_seed(0)).double())
    se = float(nll.std()) / math.sqrt(nll.numel())
    assert abs(summary["toys"]["gmm"]["entropy_nats"] - float(nll.mean())) < 4 * se


def test_existing_files_are_not_overwritten(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["toys", "gmm", "--out", str(out), "-n", "50"]) == 0
    before = (out / "toys.png").read_bytes()
    assert main(["toys", "gmm", "--out", str(out), "-n", "60"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists; pass --force" in err[0]
    assert (out / "toys.png").read_bytes() == before
    assert main(["toys", "gmm", "--out", str(out), "-n", "60", "--force"]) == 0


def test_user_errors_exit_2_with_one_line_and_no_traceback(tmp_path):
    cmd = [sys.executable, "-m", "scoresde", "toys", "nosuchtoy", "--out", str(tmp_path / "o")]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "valid names are: 2spirals" in proc.stderr
    assert not (tmp_path / "o").exists()
    proc = subprocess.run(
        [sys.executable, "-m", "scoresde", "toys", "--sde", "xx", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "valid names are: vp, vp-cosine, subvp, ve" in proc.stderr


def test_list_names_every_registry(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "dpm_solver" in listing["samplers"] and "langevin" in listing["correctors"]
    assert "ancestral_sampling" in listing["predictors"] and "log_snr" in listing["time_grids"]
    assert "gmm" in listing["toy_datasets"] and "ve" in listing["sdes"]
    assert "latent" in listing["run_kinds"] and "super_resolution" in listing["objectives"]


def test_train_writes_a_run_folder_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    args = [
        "train",
        "--out",
        str(out),
        "--set",
        "model.kwargs.width=16",
        "--set",
        "model.kwargs.depth=1",
        "--set",
        "train.batch_size=32",
        "--json",
    ]
    assert main(args + ["--steps", "6", "--set", "train.log_every=2"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["step"] == 6 and {p.name for p in out.iterdir()} == {
        "checkpoint.safetensors",
        "config.yaml",
        "metrics.csv",
        "loss.png",
    }
    before = (out / "checkpoint.safetensors").read_bytes()
    assert main(args + ["--steps", "9"]) == 2  # a run is there: neither --resume nor --force
    assert "already exists; pass --resume to continue the run" in capsys.readouterr().err
    assert (out / "checkpoint.safetensors").read_bytes() == before
    assert main(["train", "--out", str(out), "--resume", "--steps", "9", "--json"]) == 0  # the run's own config.yaml
    resumed = json.loads(capsys.readouterr().out)
    assert (
        resumed["step"] == 9
        and resumed["config"]["model"]["kwargs"]["width"] == 16
        and resumed["config"]["train"]["log_every"] == 2
    )
    assert [int(r.split(",")[0]) for r in (out / "metrics.csv").read_text().splitlines()[1:]] == [2, 4, 6, 8, 9]
    assert main(args + ["--steps", "4", "--force", "--seed", "3"]) == 0  # afresh: step 4, the old log gone
    fresh = json.loads(capsys.readouterr().out)
    assert fresh["step"] == 4 and fresh["config"]["train"]["seed"] == 3
    assert (out / "metrics.csv").read_text().splitlines()[-1].startswith("4,")
    none = ["--out", str(tmp_path / "none"), "--resume", "--steps", "2"]
    assert main(args[:1] + none + args[3:]) == 2  # nothing to resume and nothing named to start: refused
    assert "none does not exist (looked for checkpoint.safetensors and config.yaml" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert main(args[:1] + none + ["--preset", "toy-vp"] + args[3:]) == 0  # a requeued job names its preset
    assert "holds no run yet: starting the --preset toy-vp run there at step 0" in capsys.readouterr().err


def test_train_user_errors_are_one_line(tmp_path, capsys):
    """One refusal as a real process (the entry point's own path), the others in-process (the same code, no
    interpreter start-up per case)."""
    proc = subprocess.run(
        [sys.executable, "-m", "scoresde", "train", "--out", str(tmp_path / "o"), "--set", "train.lr=-1"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "invalid config field 'train.lr'" in proc.stderr, proc.stderr
    for extra, message in [
        (["--preset", "mnist-ddpm"], "MNIST needs --data-dir"),
        (["--preset", "nope"], "unknown preset 'nope'; valid names are: cifar10-ddpm"),
    ]:
        capsys.readouterr()
        assert main(["train", "--out", str(tmp_path / "o"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and "Traceback" not in err and message in err, err


def test_train_then_sample_writes_npz_and_picture(tmp_path, capsys):
    """As a user would: train a tiny run, sample it twice (the second refused without --force, nothing changed)."""
    import numpy as np

    run = tmp_path / "run"
    base = [sys.executable, "-m", "scoresde"]
    train = base + ["train", "--out", str(run), *TINY_TRAIN, "--json"]
    assert subprocess.run(train, capture_output=True, text=True).returncode == 0
    out = tmp_path / "samples" / "s.npz"
    cmd = base + [
        "sample",
        "--checkpoint",
        str(run),
        "--sampler",
        "ddim",
        "--steps",
        "4",
        "-n",
        "50",
        "--out",
        str(out),
        "--json",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["nfe"] == 5 and summary["checkpoint_step"] == 5
    data = np.load(out)
    assert data["x"].shape == (50, 2) and np.isfinite(data["x"]).all()
    assert out.with_suffix(".png").stat().st_size > 1000
    before = out.read_bytes()
    # the refusals in-process (the same code as the process above, without an interpreter start-up each)
    capsys.readouterr()
    assert main(cmd[3:]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err and out.read_bytes() == before
    assert main(cmd[3:-1] + ["--force", "--sampler", "euler"]) == 2
    err = capsys.readouterr().err
    assert "unknown sampler 'euler'; valid names are: consistency, ddim" in err and "Traceback" not in err


def test_likelihood_reports_nll_gap_and_elbo(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY_TRAIN, "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "lik.json"
    assert main(["likelihood", "--checkpoint", str(run), "-n", "20", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert saved["n"] == 20 and saved["data"] == "8gaussians" and saved["nfe"] > 0
    assert_true_nll_matches_the_entropy(saved["true_nll_nats"], "8gaussians", saved["n"])
    assert "elbo_nats" in saved and summary["out"] == str(out)
    assert saved["t_min"] == 1e-5 and saved["settings"]["method"] == "ei"
    assert 0 <= saved["nll_integration_error"] < 1e-2
    assert main(["likelihood", "--checkpoint", str(run), "-n", "20", "--out", str(out)]) == 2  # exists, no --force
    capsys.readouterr()
    bad = ["likelihood", "--checkpoint", str(run), "-n", "20", "--out", str(out), "--force"]
    assert main([*bad, "--t-min", "2"]) == 2
    assert "t_min must lie in (0, T)" in capsys.readouterr().err
    assert main([*bad, "--method", "rk45"]) == 2
    assert "unknown likelihood solver (method) 'rk45'; valid names are:" in capsys.readouterr().err
    assert (
        main(["likelihood", "--checkpoint", str(tmp_path / "nope"), "-n", "20", "--out", str(tmp_path / "x.json")]) == 2
    )
