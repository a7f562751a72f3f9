"""MkDocs hooks of the documentation site (``hooks:`` in mkdocs.yml): what the site serves from itself, so that it
works with no network at view time.

- **MathJax** from the pinned npm package (``package.json`` / ``package-lock.json``: ``npm ci``, which ``make
  install`` runs), copied into ``site/javascripts/mathjax/`` (the CHTML renderer, its fonts and the TeX extensions
  it loads on demand), where it came from a CDN at view time before.
- **The explorer** of a small model, drawn from the precomputed data ``docs/data/explorer.npz``
  (``scripts/make_docs_explorer.py`` writes it) into ``site/explorer/explorer.html``, which ``docs/explorer.md``
  embeds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError

MATHJAX = Path("node_modules") / "mathjax" / "es5"
"""The pinned MathJax distribution, relative to mkdocs.yml."""
SKIP = ("tex-svg*", "tex-mml-svg.js", "tex-chtml*", "mml-*", "node-main.js", "svg", "adaptors")
"""The parts of MathJax's distribution the site does not load (the SVG renderer, other combined bundles, Node)."""
EXPLORER_DATA = Path("data") / "explorer.npz"
"""The precomputed explorer data, relative to docs_dir (excluded from the pages by ``exclude_docs``)."""


def on_post_build(config, **kwargs) -> None:
    root, site = Path(config["config_file_path"]).parent, Path(config["site_dir"])
    mathjax = root / MATHJAX
    if not (mathjax / "tex-mml-chtml.js").is_file():
        raise PluginError(f"MathJax is not installed at {mathjax}: run `npm ci` in {root} (make install does)")
    shutil.copytree(mathjax, site / "javascripts" / "mathjax", ignore=shutil.ignore_patterns(*SKIP), dirs_exist_ok=True)
    data = Path(config["docs_dir"]) / EXPLORER_DATA
    if data.is_file():
        from scoresde.app.explorer import write_explorer
        from scoresde.app.explorer_data import ExplorerData

        (site / "explorer").mkdir(parents=True, exist_ok=True)
        write_explorer(ExplorerData.load(data), site / "explorer" / "explorer.html")
