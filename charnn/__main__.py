"""The `charnn` command (and `python -m charnn`).

PyTorch takes a second or two to import. Signal handling is set up here, before anything else is
loaded, so that Ctrl-C or SIGTERM in that time ends with the documented exit code (130, 143) and a
one-line message instead of a traceback. Training installs its own handlers later (stop and save).
"""

import signal
import sys


class _Terminated(BaseException):
    """SIGTERM outside training; a BaseException so that no `except Exception` swallows it."""


def _terminate(signum, frame):
    raise _Terminated


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    try:
        from .cli import main as run

        return run()
    except KeyboardInterrupt:  # only while importing: the CLI handles it after that
        sys.stderr.write("charnn: interrupted\n")
        return 130
    except _Terminated:
        sys.stderr.write("charnn: terminated\n")
        return 143


if __name__ == "__main__":
    sys.exit(main())
