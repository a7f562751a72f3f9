"""The ``scoresde`` console script: the command line behind a guard that is in place before torch is imported.

Importing the package takes seconds (torch). A Ctrl-C in that window would end in a traceback, or be swallowed by
an import's clean-up code and lost. Here it is recorded while the package loads and honoured right after: like any
interrupted command, one line and exit status 130.
"""

from __future__ import annotations

import signal
import sys


def main() -> int:
    """Run `scoresde.cli.main`; an interrupt at any moment, start-up included, exits 130 with one line."""
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        from scoresde.app.cli.main import exiting
        from scoresde.app.cli.main import main as run
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        if received:
            raise KeyboardInterrupt
        return exiting(run())
    except KeyboardInterrupt:
        print("scoresde: interrupted", file=sys.stderr)
        return exiting(130)


if __name__ == "__main__":
    sys.exit(main())
