"""The ``scoresde`` console script: the command line behind a guard that is in place before torch is imported.

Importing the package takes seconds (torch); a Ctrl-C in that window would otherwise end in a traceback. Here it
ends like any interrupted command: one line and exit status 130.
"""

from __future__ import annotations

import sys


def main() -> int:
    """Run `scoresde.cli.main`; an interrupt at any moment, start-up included, exits 130 with one line."""
    try:
        from scoresde.cli import main as run

        return run()
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
