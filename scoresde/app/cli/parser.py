"""The ``scoresde`` argument parser: one sub-parser a command, typed options with their defaults shown."""

from __future__ import annotations

import argparse

from . import compare, demo, distill, ema, explore, fit_grid, fit_solver, inpaint, likelihood, listing, sample, train
from .common import HelpFormatter


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line errors of the rest of the command line (no usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every sub-command (``scoresde COMMAND --help`` prints one)."""
    parser = _Parser(
        prog="scoresde",
        description="Score-based generative modelling with SDEs.\n\nexample:\n  scoresde demo --out scoresde-out",
        formatter_class=HelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(sub)
    listing.add_toys_parser(sub)
    train.add_parser(sub)
    distill.add_parser(sub)
    ema.add_parser(sub)
    fit_grid.add_parser(sub)
    fit_solver.add_parser(sub)
    sample.add_parser(sub)
    likelihood.add_parser(sub)
    compare.add_parser(sub)
    inpaint.add_parser(sub)
    explore.add_parser(sub)
    listing.add_list_parser(sub)
    return parser
