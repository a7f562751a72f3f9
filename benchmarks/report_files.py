"""What every benchmark ends with: its table printed, and ``<name>.json``, ``<name>.md`` and ``<name>.png`` written."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_report(out: Path, name: str, report: dict, text: str, plot: Callable[[dict, Path], None]) -> None:
    """Print the Markdown ``text``; write ``report`` as JSON, ``text`` as Markdown and ``plot(report, path)``'s PNG."""
    print(text)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    (out / f"{name}.md").write_text(text)
    plot(report, out / f"{name}.png")
    print(f"wrote {out / f'{name}.json'}, {name}.md and {name}.png")
