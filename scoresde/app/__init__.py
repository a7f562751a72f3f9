"""The application layer: the command line (`scoresde.app.cli`), reports (`scoresde.app.report`), the demo
(`scoresde.app.demo`) and the figures (`scoresde.app.figures`). Nothing in the library imports it."""
