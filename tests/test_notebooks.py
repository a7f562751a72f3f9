"""Every teaching notebook runs top to bottom (small settings: SCORESDE_NOTEBOOK_QUICK=1), and each .ipynb is the
jupytext pair of its reviewable percent script (edit the .py, then `jupytext --sync notebooks/*.py`)."""

import os
from pathlib import Path

import jupytext
import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parents[1] / "notebooks").glob("[0-9][0-9]_*.py"))


def test_the_six_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == [
        "01_forward_sdes",
        "02_score_matching_2d",
        "03_pc_vs_ode",
        "04_likelihood_bits_per_dim",
        "05_images",
        "06_latent_cascade",
    ]


def _paired(script: Path):
    """The notebook paired with ``script``, checked to hold the same cells, opening with what it teaches."""
    paired = script.with_suffix(".ipynb")
    assert paired.is_file(), f"{paired} is missing: run jupytext --sync {script}"
    ours, theirs = jupytext.read(script), nbformat.read(paired, as_version=4)
    assert [(c.cell_type, c.source) for c in ours.cells] == [(c.cell_type, c.source) for c in theirs.cells], (
        f"{paired.name} is out of date with {script.name}: run jupytext --sync {script}"
    )
    assert theirs.cells[0].cell_type == "markdown" and "What this notebook teaches" in theirs.cells[0].source
    return theirs


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired(script):
    """The default tier's version: every notebook is the pair of its reviewed script (running them is slow)."""
    _paired(script)


@pytest.mark.slow
@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired_and_runs(script, tmp_path, monkeypatch):
    theirs = _paired(script)
    monkeypatch.setenv("SCORESDE_NOTEBOOK_QUICK", "1")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures become image outputs
    if os.environ.get("PYTEST_XDIST_WORKER"):
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread per kernel, as per worker (see conftest)
    client = NotebookClient(theirs, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the failing cell and its traceback, on any error
    # a teaching notebook shows what it computes: at least one figure among its outputs
    figures = [
        o
        for c in theirs.cells
        if c.cell_type == "code"
        for o in c.get("outputs", [])
        if "image/png" in o.get("data", {})
    ]
    assert figures, f"{script.with_suffix('.ipynb').name} drew no figure"
