"""The `charnn` command line: thin commands over the library.

One module per command group (train, sample, evaluate, runs/info/plot/export, bench, serve), the Typer app
and the options commands share (`app`), and the error edge (`edge.main`); the terminal-only displays
(progress, show, plotting) live here too. A command turns its options into a request or config, calls the
library once, and presents the result: stdout carries only data (generated text, JSON); progress, tables,
warnings and errors go to stderr.

May import: every part of charnn; nothing imports it. Commands load PyTorch, numpy and the library's
heavier modules only when they run, so `charnn --help` starts at once.
"""

from .app import app
from .edge import main

__all__ = ["app", "main"]
