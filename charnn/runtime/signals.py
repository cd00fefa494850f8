"""How Ctrl-C and SIGTERM end a command: exit code 130 or 143 and one line, whatever the command was doing.

A signal becomes an exception in the main thread (KeyboardInterrupt, or `Terminated`), which unwinds
the command and its `finally` blocks. But Python runs a signal handler wherever the main thread happens
to be, and two places there do not let the exception through: a `__del__` method or weakref callback
(the exception is printed as "Exception ignored" and dropped) and a class body's `__set_name__` (it is
wrapped in a RuntimeError). So the handler also remembers the signal: the error edge reports a signal
that arrived, whatever way the command then ended, and a command waiting on the outside world (a
prompt) calls `raise_pending()` as it waits, so a dropped signal still ends it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager

CODES = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


class Terminated(BaseException):
    """SIGTERM outside training; a BaseException so that no `except Exception` swallows it."""


class Signals:
    """The handler for SIGINT and SIGTERM while a command runs; `pending` is the last signal that has
    not been reported (or deliberately handled) yet."""

    def __init__(self):
        self.pending: int | None = None

    def __call__(self, signum, frame):
        self.pending = signum
        if _initialising("torch"):  # see `exit_now`
            exit_now(signum)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    def raise_pending(self) -> None:
        if self.pending is not None:
            self(self.pending, None)

    def forget(self, signum: int) -> None:
        """`signum` was handled on purpose (Ctrl-C cutting a continuation short): nothing to report."""
        if self.pending == signum:
            self.pending = None

    def take(self, signum: int | None = None) -> tuple[int, str]:
        """The exit code and word for `signum` (by default the pending signal), which is now reported."""
        code_word = CODES[signum if signum is not None else self.pending]
        self.pending = None
        return code_word

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
            yield self
            return
        previous = {signum: signal.signal(signum, self) for signum in CODES}
        previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable(sys.unraisablehook)
        try:
            yield self
        finally:
            sys.unraisablehook = previous_hook
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _unraisable(self, hook):
        """Python's report of a dropped exception, except for this handler's own: that one is pending,
        and its one line comes when the command ends."""
        def report(unraisable):
            if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)) or self.pending is None:
                hook(unraisable)
        return report


def exit_now(signum: int) -> None:
    """End the process at once. For a signal while PyTorch is importing: commands import it before they
    do anything, and an exception raised inside its C++ initialisers can abort the process, or make
    Python kill itself with SIGINT at exit (a KeyboardInterrupt escaping code an extension runs)."""
    code, word = CODES[signum]
    os.write(2, f"charnn: {word}\n".encode())
    os._exit(code)


def _initialising(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _installed() -> Signals | None:
    handler = signal.getsignal(signal.SIGTERM)
    return handler if isinstance(handler, Signals) else None


def raise_pending() -> None:
    """Raise again a signal whose exception was dropped on the way (see the module's docstring)."""
    signals = _installed()
    if signals is not None:
        signals.raise_pending()


def forget_interrupt() -> None:
    """A Ctrl-C was caught on purpose: it must not end the command later."""
    signals = _installed()
    if signals is not None:
        signals.forget(signal.SIGINT)
