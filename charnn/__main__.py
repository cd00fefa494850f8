"""The `charnn` command (and `python -m charnn`).

PyTorch takes a second or two to import. Signal handling is set up here, before anything else is
loaded, so that Ctrl-C or SIGTERM at any moment ends with the documented exit code (130, 143) and a
one-line message instead of a traceback. While the command line is importing, a signal ends the
process at once: nothing has been done yet. Once a command runs, `charnn.runtime.signals.Signals` takes over
(and training installs its own handlers: stop after the step and save).
"""

import signal
import sys

from .runtime.signals import CODES, exit_now


def _exit_now(signum, frame):
    exit_now(signum)


def main() -> int:
    for signum in CODES:
        signal.signal(signum, _exit_now)
    from .cli import main as run

    return run()


if __name__ == "__main__":
    sys.exit(main())
