"""What several commands declare alike: the model argument, --device, --json, --quiet, and help text
that reads each default from the config dataclass that owns it."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from ..config import CELLS, DEVICES, PRECISIONS, SCHEDULES, SIZES, TrainConfig

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
