"""The `charnn` command (and `python -m charnn`).

PyTorch takes a second or two to import. Signal handling is set up here, before anything else is
loaded, so that Ctrl-C or SIGTERM at any moment ends with the documented exit code (130, 143) and a
one-line message instead of a traceback. While the command line is importing, a signal ends the
process at once: nothing has been done yet. Once it runs, `charnn.cli.signals` takes over (and
training installs its own handlers: stop after the step and save).
"""

import os
import signal
import sys

_CODES = {signal.SIGINT: (130, "interrupted"), signal.SIGTERM: (143, "terminated")}


def _exit_now(signum, frame):
    code, word = _CODES[signum]
    os.write(2, f"charnn: {word}\n".encode())
    os._exit(code)


def main() -> int:
    for signum in _CODES:
        signal.signal(signum, _exit_now)
    from .cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
