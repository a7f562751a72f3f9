"""The documentation site builds in strict mode (a broken link, cross-reference or docstring fails it), and
its examples are the package's: the API reference renders the public functions from their docstrings."""

import functools
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from conftest import open_page

ROOT = Path(__file__).parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built once for this module's tests."""
    site = tmp_path_factory.mktemp("docs") / "site"
    proc = build(ROOT / "mkdocs.yml", site)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return site


@pytest.mark.slow  # the full site (mkdocstrings over the package): the default tier builds a one-page site below
def test_site_builds_strict_with_the_api_reference(site):
    reference = (site / "reference" / "samplers" / "index.html").read_text()
    assert "scoresde.samplers.sample" in reference and "Tweedie" in reference  # rendered from the docstring
    likelihood = (site / "concepts" / "likelihood" / "index.html").read_text()
    assert "arithmatex" in likelihood  # equations go to MathJax
    assert "cdn.jsdelivr" not in likelihood and (site / "javascripts" / "mathjax" / "tex-mml-chtml.js").is_file()
    benchmarks = (site / "benchmarks" / "index.html").read_text()
    assert "dpm_solver" in benchmarks  # the tables are included from benchmarks/results
    explorer = site / "explorer" / "explorer.html"
    assert explorer.is_file() and explorer.stat().st_size < 10e6  # drawn from docs/data/explorer.npz
    assert 'src="explorer.html"' in (site / "explorer" / "index.html").read_text()


@pytest.fixture(scope="module")
def served(site):
    """The built site on a local HTTP server (as a course page or `mkdocs serve` would give it)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.slow
def test_concept_page_shows_typeset_math_with_the_network_off(browser, served):
    """MathJax comes from the site itself: with every request off the machine refused, the likelihood page's
    equations are typeset (MathJax's containers, no raw TeX left in the text) and nothing was asked of the network."""
    page = open_page(browser, f"{served}/concepts/likelihood/", offline=True)
    try:
        page.wait_for_function("document.querySelectorAll('mjx-container').length > 10", timeout=30_000)
        text = page.evaluate("document.body.innerText")
        assert "\\(" not in text and "\\mathbb" not in text and "\\partial" not in text, text[:2000]
        assert page.refused == [] and page.problems == [], (page.refused, page.problems)
    finally:
        page.close()


@pytest.mark.slow
def test_the_sites_explorer_opens_offline(browser, served):
    page = open_page(browser, f"{served}/explorer/explorer.html", offline=True)
    try:
        page.wait_for_selector("#explorer-time .main-svg")
        page.wait_for_selector("#explorer-samplers .main-svg")
        assert page.refused == [] and page.problems == [], (page.refused, page.problems)
    finally:
        page.close()


def test_a_broken_cross_reference_fails_the_build(tmp_path):
    """The site's own configuration on a one-page site (not a second full build): a broken reference fails it."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text(
        "# Broken\n\nSee [`sample`][scoresde.sample] and [`nothing`][scoresde.no_such_function].\n"
    )
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    config["docs_dir"] = str(docs)
    config["nav"] = [{"Home": "index.md"}]
    config.pop("hooks")  # (its path is relative to the site's own mkdocs.yml)
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    snippets = next(e for e in config["markdown_extensions"] if isinstance(e, dict) and "pymdownx.snippets" in e)
    snippets["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "Could not find cross-reference target 'scoresde.no_such_function'" in proc.stderr
