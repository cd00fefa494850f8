"""The Typer application every command registers with, and what they share to talk to people:
stderr for everything human, stdout for data alone."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer
from rich.console import Console

from .. import __version__
from .options import EXIT_CODES_HELP

app = typer.Typer(
    name="charnn",
    help="Train character-level LSTM/GRU language models on any text, sample from them, evaluate them.\n\n"
         + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def stderr(width: int | None = None) -> Console:
    return Console(stderr=True, highlight=False, width=width)


def say(console: Console, text: str, quiet: bool = False, style: str | None = None) -> None:
    """One line for people, printed literally (no markup or emoji codes in user text)."""
    if not quiet:
        console.print(text, markup=False, highlight=False, soft_wrap=True, style=style)


def print_json(data, indent: int | None = 2) -> None:
    sys.stdout.write(json.dumps(data, indent=indent) + "\n")  # ASCII: safe whatever the locale
    sys.stdout.flush()


def quiet_broken_pipe() -> None:
    """After the reader closed stdout, point it at /dev/null so the final flush at exit cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _version_callback(value: bool) -> None:
    if value:
        print(f"charnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train character-level LSTM/GRU language models on any text, sample from them, evaluate them."""
