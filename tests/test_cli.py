"""The command line: files written, one-line errors with exit status 2, nothing overwritten without --force."""

import json
import subprocess
import sys

from scoresde.cli import main


def test_toys_writes_figures_and_json(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["toys", "gmm", "moons", "--out", str(out), "-n", "200", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (out / "toys.png").stat().st_size > 1000 and (out / "forward.png").stat().st_size > 1000
    assert json.loads((out / "toys.json").read_text()) == summary
    assert summary["toys"]["moons"]["entropy_nats"] is None
    assert abs(summary["toys"]["gmm"]["entropy_nats"] - 0.0) < 10  # a finite number of nats


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
    proc = subprocess.run([sys.executable, "-m", "scoresde", "toys", "--sde", "xx", "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert proc.returncode == 2 and "valid names are: vp, vp-cosine, subvp, ve" in proc.stderr


def test_list_names_every_registry(capsys):
    assert main(["list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert "dpm_solver" in listing["samplers"] and "langevin" in listing["correctors"]
    assert "ancestral_sampling" in listing["predictors"] and "log_snr" in listing["time_grids"]
    assert "gmm" in listing["toy_datasets"] and "ve" in listing["sdes"]
