"""The command line (``herald``): one module per command group, and the demo."""

from worker.cli.commands import app, main

__all__ = ["app", "main"]
