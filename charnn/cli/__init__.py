"""The `charnn` command line: thin commands over the library.

One module per command group (train, sample, evaluate, runs/info/plot, bench), the options they
share (`options`), the Typer app (`app`) and the error edge (`edge.main`); the terminal-only
displays (progress, show, plotting) live here too. A command turns its options into a request or
config, calls the library once, and presents the result: stdout carries only data (generated text,
JSON); progress, tables, warnings and errors go to stderr.
"""

from .app import app
from .edge import main

__all__ = ["app", "main"]
