"""How fast commands start: whole `charnn` processes, timed as a shell user runs them.

`charnn bench` and scripts/startup.py time `charnn --help`, `charnn runs` (10 runs present),
`charnn sample RUN -n 200` (the default 2x256 model) and `charnn info RUN` against
`python -c "import numpy"` and `python -c "import torch"`, every command once per round, taking
turns, for `rounds` rounds: the figure is the median. With `before`, the same commands also run
with another checkout of charnn first on PYTHONPATH (the code before a change), in the same turns.
The runs are made by training: one optimiser step each, on a synthetic corpus.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CharnnError

ROUNDS = 10
RUNS = 10  # in the runs root `charnn runs` lists
MODEL: dict = {}  # the sampled run's model options: {} is the default 2x256 LSTM
GOALS = {"charnn --help": 0.35, "charnn runs": 0.45, "charnn sample RUN -n 200": 0.5, "charnn info RUN": 0.5}


@dataclass(frozen=True)
class Command:
    label: str
    argv: tuple[str, ...]
    before: bool = False  # run with the `before` checkout on PYTHONPATH


def make_runs(root: Path, count: int | None = None, model: dict | None = None) -> Path:
    """`count` (default RUNS) runs of one step each under root/runs, of `model` (default MODEL's options);
    returns the first."""
    from ..config import TrainConfig  # noqa: PLC0415 (training: PyTorch)
    from ..train.start import start_training  # noqa: PLC0415

    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b"\n etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ.,;:!?'-", dtype=np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    corpus.write_bytes(alphabet[rng.integers(0, len(alphabet), 100_000)].tobytes())
    config = TrainConfig(max_steps=1, eval_every=1, log_every=1, save_every_seconds=None, device="cpu", seed=0)
    runs = [root / "runs" / f"run-{i:02d}" for i in range(RUNS if count is None else count)]
    for run in runs:
        start_training([str(corpus)], dict(MODEL if model is None else model), config, out=run).run()
    return runs[0]


def startup_commands(run: Path, charnn: tuple[str, ...], before: bool) -> list[Command]:
    python = (sys.executable,)
    baselines = [Command('python -c "import numpy"', (*python, "-c", "import numpy")),
                 Command('python -c "import torch"', (*python, "-c", "import torch"))]
    ours = [("charnn --help", ("--help",)), ("charnn runs", ("runs",)),
            ("charnn sample RUN -n 200", ("sample", str(run), "-n", "200")), ("charnn info RUN", ("info", str(run)))]
    commands = list(baselines)
    for label, args in ours:
        commands.append(Command(label, (*charnn, *args)))
        if before:
            commands.append(Command(label, (*charnn, *args), before=True))
    return commands


def charnn_command() -> tuple[str, ...]:
    """The `charnn` script beside this Python, as a user types it; else `python -m charnn`."""
    script = Path(sys.executable).with_name("charnn")
    return (str(script),) if script.is_file() else (sys.executable, "-m", "charnn")


def time_commands(commands: list[Command], rounds: int, env: dict, before: Path | None,
                  log: Callable[[str], None]) -> dict[Command, list[float]]:
    """Each command once per round, in turns; every run must succeed."""
    times: dict[Command, list[float]] = {command: [] for command in commands}
    before_env = None if before is None else {**env, "PYTHONPATH": str(before)}
    for round_ in range(rounds):
        log(f"startup: round {round_ + 1} of {rounds}")
        for command in commands:
            start = time.perf_counter()
            result = subprocess.run(command.argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, env=before_env if command.before else env)
            times[command].append(time.perf_counter() - start)
            if result.returncode != 0:
                message = result.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
                raise CharnnError(f"startup benchmark: `{command.label}` failed: {message[0]}")
    return times


def bench_startup(workdir: Path, rounds: int = ROUNDS, before: Path | None = None,
                  log: Callable[[str], None] = lambda message: None) -> list[dict]:
    """One row per command: the median seconds (and before the change, with `before`), and the goal."""
    if rounds < 1:
        return []
    log("startup: making the runs")
    run = make_runs(workdir)
    env = {**os.environ, "CHARNN_RUNS_DIR": str(workdir / "runs"), "NO_COLOR": "1", "COLUMNS": "100"}
    env.pop("PYTHONPATH", None)
    commands = startup_commands(run, charnn_command(), before is not None)
    times = time_commands(commands, rounds, env, before, log)
    rows: dict[str, dict] = {}
    for command, seconds in times.items():
        row = rows.setdefault(command.label, {"command": command.label, "rounds": rounds})
        median = round(statistics.median(seconds), 3)
        if command.before:
            row["before_seconds"] = median
            row["speedup"] = round(median / row["seconds"], 1)
        else:
            row.update(seconds=median, spread=round(max(seconds) - min(seconds), 3))
        if command.label in GOALS:
            row["goal_seconds"] = GOALS[command.label]
    return list(rows.values())
