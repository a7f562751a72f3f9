"""``python -m scoresde`` runs the command line."""

import sys

from .app.cli.main import exiting, main

sys.exit(exiting(main()))
