"""The documentation site builds in strict mode (a broken link, cross-reference or docstring fails it), and
its examples are the package's: the API reference renders the public functions from their docstrings."""

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).parents[1]


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )


def test_site_builds_strict_with_the_api_reference(tmp_path):
    proc = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "samplers" / "index.html").read_text()
    assert "scoresde.samplers.sample" in reference and "Tweedie" in reference  # rendered from the docstring
    likelihood = (tmp_path / "site" / "concepts" / "likelihood" / "index.html").read_text()
    assert "arithmatex" in likelihood  # equations go to MathJax
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text()
    assert "dpm_solver" in benchmarks  # the tables are included from benchmarks/results


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
    config["plugins"][1]["mkdocstrings"]["handlers"]["python"]["paths"] = [str(ROOT)]
    snippets = next(e for e in config["markdown_extensions"] if isinstance(e, dict) and "pymdownx.snippets" in e)
    snippets["pymdownx.snippets"]["base_path"] = [str(ROOT)]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    proc = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert proc.returncode != 0
    assert "Could not find cross-reference target 'scoresde.no_such_function'" in proc.stderr
