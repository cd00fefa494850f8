"""The `charnn` command (and `python -m charnn`).

PyTorch takes a second or two to import. Signal handling is set up here, before anything else is
loaded, so that Ctrl-C or SIGTERM at any moment ends with the documented exit code (130, 143) and a
one-line message instead of a traceback. While PyTorch is importing, a signal ends the process at
once: nothing has been done yet, and an exception raised inside its C++ module initialisers would
abort the process instead. Training installs its own handlers later (stop after the step and save).
"""

import os
import signal
import sys

_CODES = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


class _Terminated(BaseException):
    """SIGTERM outside training; a BaseException so that no `except Exception` swallows it."""


def _exit_now(signum, frame):
    code, word = _CODES[signum]
    os.write(2, f"charnn: {word}\n".encode())
    os._exit(code)


def _terminate(signum, frame):
    raise _Terminated


def main() -> int:
    for signum in _CODES:
        signal.signal(signum, _exit_now)
    from .cli import main as run

    signal.signal(signal.SIGINT, signal.default_int_handler)  # the CLI turns KeyboardInterrupt into 130
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return run()
    except _Terminated:
        sys.stderr.write("charnn: terminated\n")
        return 143


if __name__ == "__main__":
    sys.exit(main())
