"""The application layer: the command line (`scoresde.app.cli`), reports and the demo (`scoresde.app.report`) and
the figures (`scoresde.app.figures`). Nothing in the library imports it."""
