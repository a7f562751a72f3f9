"""Every benchmark script runs end to end with ``--quick`` into a temporary folder and writes its results (slow:
the scripts train and sample for real, on small settings). The scripts share one helper and import each other
nowhere."""

from __future__ import annotations

import ast
import runpy
import shutil
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")
HEAVY = {"distillation", "reliability", "latent_cascade", "training", "likelihood", "sample_tails", "guidance",
         "fitted_solver", "likelihood_images"}  # fmt: skip
"""Smoke runs of 20-30 s each on 2 CPU cores: ``bench`` (``make test-bench``), not the CI's slow tier, which must fit
the whole ``.ci/run`` in 10 minutes; each of these scripts' library code is under the default and slow tiers."""


def test_scripts_import_the_library_and_the_shared_helper_never_each_other():
    names = {p.stem for p in SCRIPTS}
    for script in SCRIPTS:
        tree = ast.parse(script.read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not imported & names, f"{script.name} imports another script: {imported & names}"
        assert "common" in imported, f"{script.name} does not use the shared helper (benchmarks/common.py)"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [pytest.param(p, marks=(pytest.mark.bench,) if p.stem in HEAVY else ()) for p in SCRIPTS],
    ids=lambda p: p.stem,
)
def test_every_benchmark_runs_quick(script, tmp_path, monkeypatch):
    """In this process (``runpy``: no interpreter and torch import of its own, the shared fixtures of the worker),
    as ``python SCRIPT --quick --threads 1 --out TMP`` from TMP."""
    if script.stem == "explorer" and shutil.which("chromium") is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(sys, "argv", [str(script), "--quick", "--threads", "1", "--out", str(tmp_path)])
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts' shared helper (benchmarks/common.py)
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (None, 0), f"{script.name} --quick exited {exc.code}"
    finally:
        torch.set_num_threads(threads)
        sys.modules.pop("common", None)
    written = [p for p in tmp_path.iterdir() if p.suffix in (".json", ".md", ".png")]
    assert written, f"{script.name} --quick wrote no results into --out"
