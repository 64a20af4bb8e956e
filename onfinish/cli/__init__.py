"""The `onfinish` command line: the root app (app.py), the terminal helpers every group shares
(console.py) and the settings reference (configuration.py). Each room keeps its own commands."""

from onfinish.cli.app import app, main

__all__ = ["app", "main"]
