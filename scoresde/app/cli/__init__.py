"""The ``scoresde`` command line. Thin: parse (`parser`), call the library, write files; one module per command.

User errors (unknown names, bad values, unwritable paths) print one line to stderr and exit with status 2.
"""

from .main import main
from .parser import build_parser

__all__ = ["main", "build_parser"]
