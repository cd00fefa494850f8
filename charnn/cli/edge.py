"""The error edge: every failure of a command becomes one line on stderr and an exit code.

A CharnnError is exit code 1; a bad option 2; Ctrl-C 130 and SIGTERM 143 (`signals`);
a reader closing the pipe early is a quiet 0; anything else is a bug, shown as one line (and the
traceback with CHARNN_DEBUG=1).
"""

from __future__ import annotations

import os
import signal
import sys

import typer

from ..errors import CharnnError
from ..runtime.signals import Signals, Terminated
from .app import Interrupted, app, quiet_broken_pipe, say, stderr

# each module registers its commands with the app; the order of these imports is the order of the help
from . import train  # noqa: E402, F401, I001
from . import sample  # noqa: E402, F401
from . import evaluate  # noqa: E402, F401
from . import bench  # noqa: E402, F401
from . import runs  # noqa: E402, F401
from . import serve  # noqa: E402, F401

try:  # typer >= 0.22 vendors click; older releases raise click's own exceptions
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions


def main(argv: list[str] | None = None) -> int:
    """Run the command line and turn every failure into one line on stderr and an exit code."""
    with Signals().installed() as signals:
        code = _run(sys.argv[1:] if argv is None else list(argv), signals)
        if signals.pending is not None:  # a signal the command did not end by (see `signals`)
            code = _ended_by(signals)
    return code


def _ended_by(signals: Signals, signum: int | None = None) -> int:
    code, word = signals.take(signum)
    say(stderr(), f"charnn: {word}")
    return code


def _run(argv: list[str], signals: Signals) -> int:
    console = stderr()
    try:
        result = app(args=argv, prog_name="charnn", standalone_mode=False, obj={"argv": argv})
    except CharnnError as err:
        say(console, f"charnn: error: {err}", style="red")
        return 1
    except click_exceptions.NoArgsIsHelpError:
        return 2  # the help has been shown
    except click_exceptions.UsageError as err:
        command = f"{err.ctx.command_path} --help" if err.ctx and err.ctx.command_path else "charnn --help"
        say(console, f"charnn: usage error: {err.format_message()} (see '{command}')", style="red")
        return 2
    except click_exceptions.ClickException as err:
        say(console, f"charnn: error: {err.format_message()}", style="red")
        return err.exit_code
    except (typer.Abort, KeyboardInterrupt, Interrupted):
        return _ended_by(signals, signal.SIGINT)
    except Terminated:
        return _ended_by(signals, signal.SIGTERM)
    except BrokenPipeError:
        quiet_broken_pipe()
        return 0
    except OSError as err:  # the machine said no: a full disk, a permission, a missing directory
        if signals.pending is not None:
            return _ended_by(signals)
        if os.environ.get("CHARNN_DEBUG"):
            raise
        where = f"{err.filename}: " if err.filename else ""
        say(console, f"charnn: error: {where}{err.strerror or err}", style="red")
        return 1
    except Exception as err:  # a bug, not a user error: one line, and the traceback on request
        if signals.pending is not None:  # a signal's exception wrapped on the way (see `signals`)
            return _ended_by(signals)
        return _internal_error(console, err)
    return result if isinstance(result, int) else 0


def _internal_error(console, err: Exception) -> int:
    if os.environ.get("CHARNN_DEBUG"):
        raise err
    allocation = _out_of_memory(err)
    if allocation is not None:  # sampling or evaluating
        say(console, f"charnn: error: out of memory ({allocation}) "
                     "(try --device cpu, or fewer --num-samples when sampling)", style="red")
        return 1
    say(console, f"charnn: internal error: {type(err).__name__}: {err} (set CHARNN_DEBUG=1 for the traceback)",
        style="red")
    return 1


def _out_of_memory(err: Exception) -> str | None:
    """What could not be allocated, if `err` is running out of memory: numpy's MemoryError, or one of
    PyTorch's allocators (asked only when PyTorch is loaded: nothing else raises those)."""
    if isinstance(err, MemoryError):
        return str(err) or "MemoryError"
    if "torch" not in sys.modules:
        return None
    from ..runtime.device import describe_allocation, is_out_of_memory  # noqa: PLC0415

    return describe_allocation(err) if is_out_of_memory(err) else None
