"""``scoresde`` entry point: parse, run the command, report a user error in one line (exit 2)."""

from __future__ import annotations

import sys

from ..._io import json_text
from .common import (
    Outcome,
    UserError,
    check_device,
)
from .parser import build_parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``scoresde`` command line on ``argv`` (default: ``sys.argv[1:]``); returns the exit status
    (0; 2 for a user error, with its one-line message on stderr; 130 for an interrupted command)."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "n", 1) < 1:
            raise UserError(f"-n must be >= 1, got {args.n}")
        if getattr(args, "out", None) is not None and not args.out.strip():  # Path("") would be the current folder
            raise UserError("--out is empty; name a folder or file (e.g. --out runs/toy)")
        check_device(args.device)
        result, status = args.run(args), 0
        if isinstance(result, Outcome):
            result, status = result
    except (UserError, ValueError, TypeError) as exc:  # CheckpointError, ConfigError, RunFolderError included
        print(f"scoresde {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that cannot be read or written: say which and why
        where = f" {exc.filename}" if exc.filename else ""
        print(f"scoresde {args.command}: error:{where} {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scoresde {args.command}: interrupted", file=sys.stderr)
        return 130
    if args.json and result:
        print(json_text(result))
    else:
        for key, value in result.items():
            print(f"{key}: {value}")
    return status
