"""Shared fixtures: the SDEs every test is parametrised over (the package's one name registry), and shared checks."""

import math
import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: the tests' small tensors run faster without oversubscription; the
    # processes a test starts (the CLI, the demo, torchrun) inherit it: two OpenMP threads beside a busy worker
    # spin-wait, which made the quick demo 204 s instead of 18 s
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from scoresde import create_sde, toy_dataset
from scoresde.app.cli import main
from scoresde.config.presets import preset
from scoresde.config.schema import override
from scoresde.processes import sde_names


def sde_matrix(rows: list, sdes: tuple[str, ...]) -> list:
    """``pytest.param(sde, *row)`` for every row on every SDE: a diagonal in the default tier (row k on
    ``sdes[k % len]``, so every row runs once and every SDE sees its share), the rest of the matrix in ``slow``."""
    params = []
    for k, row in enumerate(rows):
        row = row if isinstance(row, tuple) else (row,)
        for sde in sdes:
            marks = () if sde == sdes[k % len(sdes)] else (pytest.mark.slow,)
            params.append(pytest.param(sde, *row, marks=marks, id="-".join([*map(str, row), sde])))
    return params


@pytest.fixture(params=sde_names(), ids=sde_names())
def sde(request):
    return create_sde(request.param)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def assert_true_nll_matches_the_entropy(true_nll: float, toy: str, n: int) -> None:
    """The held-out points' mean true NLL is an n-sample estimate of the toy's entropy: within 4 standard errors
    (the spread of -log p measured on 20,000 fresh draws)."""
    data = toy_dataset(toy)
    nll = -data.log_prob(data.sample(20_000, torch.Generator().manual_seed(1)).double())
    assert abs(true_nll - data.entropy()) < 4 * float(nll.std()) / math.sqrt(n), (true_nll, data.entropy())


# the fault battery's helpers (test_reliability, test_refusals) -----------------------------------------------
TINY = ["--set", "model.kwargs.width=16", "--set", "model.kwargs.depth=1", "--set", "train.batch_size=32"]


def tiny_toy(steps: int, *extra: str):
    sets = [s for s in TINY if s != "--set"]
    return override(preset("toy-vp"), f"train.steps={steps}", "train.warmup=2", "train.log_every=1", *sets, *extra)


def one_line(capsys, message: str) -> str:
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err and message in err, err
    return err


def train_cli(out: Path, *args: str) -> int:
    return main(["train", "--out", str(out), *TINY, "--json", *args])


def rewrite_checkpoint(path: Path, edit) -> None:
    """Rewrite a checkpoint with ``edit(tensors, metadata)`` applied (a file a user or a fault changed)."""
    with safe_open(str(path), framework="pt") as fh:
        metadata, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)


CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",  # no connections to Google's hosts: the machine's network is closed
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium driven by Playwright (the Python package; the browser is Debian's, not a download), or a
    skip with its one-line reason where none can run."""
    import shutil

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed (pip install playwright): the browser tests need it")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("no Chromium here (Debian: apt-get install chromium; .ci/run installs it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url: str, *, offline: bool = False, viewport=(1450, 1000)):
    """A new page at ``url`` with its console errors and uncaught exceptions collected in ``page.problems``; with
    ``offline`` every request that leaves the machine (not file:// nor localhost) is refused and listed in
    ``page.refused``."""
    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.problems, page.refused = [], []
    page.on("console", lambda m: page.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: page.problems.append(f"page error: {e}"))
    if offline:
        local = ("file://", "http://127.0.0.1", "http://localhost")

        def route(route):
            if route.request.url.startswith(local):
                return route.continue_()
            page.refused.append(route.request.url)
            return route.abort()

        page.route("**/*", route)
    page.goto(url)
    return page
