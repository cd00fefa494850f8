"""Processes around training: `--nproc N` launches N ranks on this machine, and Ctrl-C/SIGTERM become
a request to stop after the current step (and save) instead of an exception in the middle of one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from ..errors import CharnnError


@dataclass(frozen=True)
class Ranks:
    """Which of the processes of a distributed run this one is."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def ranks_from_environment() -> Ranks:
    """What torchrun (or any launcher that sets RANK/WORLD_SIZE/LOCAL_RANK) says this process is."""
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise CharnnError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    return Ranks(rank, world_size, local_rank)


class StopFlag:
    """SIGINT/SIGTERM ask training to stop after the current step and save; a second Ctrl-C aborts at
    once. Use as a context manager; calling it says why to stop ('interrupted'), or None."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> str | None:
        return "interrupted" if self.signum is not None else None

    @property
    def name(self) -> str:
        return "SIGTERM" if self.signum == signal.SIGTERM else "SIGINT"

    @property
    def exit_code(self) -> int:
        return 143 if self.signum == signal.SIGTERM else 130


def without_nproc(argv: list[str]) -> list[str]:
    """The command line with its --nproc option taken out (what each rank runs)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return args


def launch_processes(nproc: int, argv: list[str]) -> int:
    """`charnn train --nproc N ...`: N copies of `charnn ARGV` (without --nproc) on this machine, set up
    as torchrun would set them up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so signals and exit
    codes stay charnn's own. Returns rank 0's exit code (or the first failure's)."""
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc)}
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = without_nproc(argv)
    children = [subprocess.Popen([sys.executable, "-m", "charnn", *args],
                                 env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(nproc)]
    # Ctrl-C reaches every process of the terminal's group by itself; a SIGTERM sent here is passed on
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: [c.send_signal(signum) for c in children])
    try:
        return wait_for_ranks(children)
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_for_ranks(children: list[subprocess.Popen], grace: float = 30.0) -> int:
    """Rank 0's exit code; if a rank fails, the others (likely waiting for it) are stopped after `grace` s."""
    failed_at = None
    while True:
        try:
            codes = [child.poll() for child in children]
            if all(code is not None for code in codes):
                return codes[0] if codes[0] else next((code for code in codes if code), 0)
            if failed_at is None and any(code for code in codes if code is not None):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.1)
        except KeyboardInterrupt:
            continue  # the ranks got the Ctrl-C too: wait for them to save and stop
