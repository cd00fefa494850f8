"""The Typer application every command registers with, what commands declare alike (the model argument,
--device, --json, --quiet, --threads, and help text that reads each default from the config dataclass that
owns it), and what they share to talk to people: stderr for everything human, stdout for data alone."""

from __future__ import annotations

import functools
import json
import os
import sys
from enum import Enum
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.text import Text

from .. import __version__
from ..config import CELLS, DEVICES, PRECISIONS, SCHEDULES, SIZES, TrainConfig
from ..errors import CharnnError
from ..printable import printable

EXIT_CODES_HELP = ("Exit codes: 0 success, 1 error (one line on stderr), 2 bad usage, 130 interrupted (Ctrl-C), "
                   "143 terminated.")


def default(cls, name: str) -> str:
    """'[default: VALUE]' for help text, VALUE read from the dataclass that owns the default."""
    return f"\\[default: {cls.__dataclass_fields__[name].default}]"


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """The values a config accepts, as the Enum Typer shows and checks."""
    return Enum(name, {value: value for value in values}, type=str)


Cell = _choices("Cell", CELLS)
Device = _choices("Device", DEVICES)
Schedule = _choices("Schedule", SCHEDULES)
Size = _choices("Size", SIZES)
Precision = _choices("Precision", PRECISIONS)
XAxis = _choices("XAxis", ("step", "time"))


ModelArgument = Annotated[Optional[str], typer.Argument(
    help="Run directory (its best.pt) or checkpoint file. \\[default: the newest run]", show_default=False)]
WeightsArgument = Annotated[Optional[str], typer.Argument(
    help="Run directory (its best.safetensors, else best.pt), checkpoint or .safetensors file. "
         "\\[default: the newest run]", show_default=False)]
def device_option(panel: str | None = None):
    return typer.Option(help="Where to compute; auto picks CUDA, then MPS, then the CPU. "
                             f"{default(TrainConfig, 'device')}", rich_help_panel=panel, show_default=False)


DeviceOption = Annotated[Optional[Device], device_option()]


def threads_option(panel: str | None = None):
    return typer.Option(
        "--threads", help="Threads to compute with: a number fixes it; auto (the default, unless CHARNN_THREADS or "
        "OMP_NUM_THREADS says otherwise) times the work at each count as it goes and keeps the fastest, so a busy "
        "machine does not slow charnn down twice.", rich_help_panel=panel, show_default=False)


ThreadsOption = Annotated[Optional[str], threads_option()]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout instead of a table on stderr.")]
QuietFlag = Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.")]


def given(**options) -> dict:
    """The options the user gave (those not None): what a command passes on, leaving defaults to the configs."""
    return {name: value.value if isinstance(value, Enum) else value
            for name, value in options.items() if value is not None}


def unescape(text: str) -> str:
    """'\\n', '\\t', '\\0', '\\r' and '\\\\' typed on the command line, as the characters they stand for."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "0": "\0", "r": "\r", "\\": "\\"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def nonempty(value: str | None, name: str) -> str | None:
    """An empty path (an unset shell variable) is a usage error, not the current directory."""
    if value == "":
        raise typer.BadParameter("an empty path; name a run directory or a file", param_hint=name)
    return value


# --- the app, and talking to people ------------------------------------------------------------

app = typer.Typer(
    name="charnn",
    help="Train character-level LSTM/GRU language models on any text, sample from them, evaluate them.\n\n"
         + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class Interrupted(BaseException):
    """Ctrl-C in a command, carried past Typer (which would turn it into a silent exit 130) to the error edge."""


def command(*args, **kwargs):
    """`app.command`, with Ctrl-C reported by the error edge like every other way a command ends."""
    def register(function):
        @functools.wraps(function)
        def run(*call_args, **call_kwargs):
            try:
                return function(*call_args, **call_kwargs)
            except KeyboardInterrupt:
                raise Interrupted from None
        return app.command(*args, **kwargs)(run)
    return register


class _Console(Console):
    """A console that shows every string it prints (a line, a table's cell or title) with the characters a
    terminal would obey as escapes (`charnn.printable`): a run named ESC ] 0 ; ... prints as
    `\\x1b]0;...`, and sets no title. A `Text` is printed as it is: make one with `shown`."""

    def render_str(self, text: str, **options) -> Text:
        return super().render_str(printable(text), **options)


def stderr(width: int | None = None) -> Console:
    """The console for people. Text is printed as given, control characters escaped: no markup, no emoji
    codes (a run named 'my:100:model' stays that), no highlighting; NO_COLOR (https://no-color.org)
    turns off every style."""
    plain = bool(os.environ.get("NO_COLOR"))
    return _Console(stderr=True, highlight=False, markup=False, emoji=False, width=width,
                    color_system=None if plain else "auto")


def shown(text: str, style: str = "", keep: str = "", **options) -> Text:
    """A rich Text of a name or of text from a file, its control characters escaped as the console's
    strings are (those in `keep` stay: see `charnn.printable`)."""
    return Text(printable(str(text), keep), style=style, **options)


def say(console: Console, text: str, quiet: bool = False, style: str | None = None) -> None:
    """One line for people, printed literally."""
    if not quiet:
        console.print(text, markup=False, emoji=False, highlight=False, soft_wrap=True, style=style)


def stdout_bytes():
    """stdout's binary stream, for the data a command prints; a closed stdout (`>&-`) is an error."""
    if sys.stdout is None:
        raise CharnnError("stdout is closed: there is nowhere to write the output", hint="redirect it to a file")
    return sys.stdout.buffer


def print_json(data, indent: int | None = 2) -> None:
    write_stdout((json.dumps(data, indent=indent) + "\n").encode("ascii"))  # ASCII: safe whatever the locale


def write_stdout(data: bytes) -> None:
    """Write and flush data on stdout; a full disk or device is an error in words, a closed pipe quiet."""
    stream = stdout_bytes()
    try:
        stream.write(data)
        stream.flush()
    except BrokenPipeError:
        raise
    except OSError as err:
        raise CharnnError(f"cannot write to stdout ({err.strerror or err})") from None


def quiet_broken_pipe() -> None:
    """After the reader closed stdout, point it at /dev/null so the final flush at exit cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _version_callback(value: bool) -> None:
    if value:
        write_stdout(f"charnn {__version__}\n".encode("ascii"))
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train character-level LSTM/GRU language models on any text, sample from them, evaluate them."""
