"""``scoresde`` entry point: parse, run the command, report a user error in one line (exit 2)."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

from ..._io import json_text
from ...likelihood.exponential_integrator import SolverError
from .common import (
    Outcome,
    UserError,
    check_device,
)
from .parser import build_parser


@contextlib.contextmanager
def _interrupt_once() -> Iterator[None]:
    """While a command runs, the first SIGINT raises `KeyboardInterrupt` and later ones are ignored, so that a
    second Ctrl-C cannot interrupt the first one's clean-up with a traceback (a trainer installs its own handler
    while it trains: it saves and stops). The previous handler is restored at the end."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def exiting(status: int) -> int:
    """For a process about to exit with ``status``: ignore SIGINT from here on, so that a late Ctrl-C cannot kill the
    interpreter's shutdown (which restores the default handler) or print a traceback. Returns ``status``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the ``scoresde`` command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status
    (0; 2 for a user error, with its one-line message on stderr; 130 for an interrupted command, 143 for training
    stopped by SIGTERM)."""
    with _interrupt_once():
        try:
            return _run(build_parser().parse_args(argv))
        except KeyboardInterrupt:  # landed outside the command (parsing, reporting)
            print("scoresde: interrupted", file=sys.stderr)
            return 130


def _caused_by_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` was raised because of a `KeyboardInterrupt` (its cause or context, at any depth)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _run(args) -> int:
    try:
        if getattr(args, "out", None) is not None and not args.out.strip():  # Path("") would be the current folder
            raise UserError("--out is empty; name a folder or file (e.g. --out runs/toy)")
        check_device(args.device)
        result, status = args.run(args), 0
        if isinstance(result, Outcome):
            result, status = result
    except (UserError, ValueError, TypeError, SolverError) as exc:  # CheckpointError, ConfigError, RunFolderError
        print(f"scoresde {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: say which and why
        where = f" {exc.filename}" if exc.filename else ""
        print(f"scoresde {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scoresde {args.command}: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # a Ctrl-C inside a C extension's initialisation arrives as "initialization failed"
        if not _caused_by_interrupt(exc):
            raise
        print(f"scoresde {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json and result:
        print(json_text(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return status
