"""The busy machine: charnn's speed beside other work, at one thread, at all threads and under its own
thread policy (`charnn bench --busy` and scripts/busy.py).

Each figure comes from a fresh process (`python -m charnn.bench.busy WORK THREADS SECONDS`), as a user's
command would start, timed from its first unit of work to its last: a policy's probes count against it.
The competitors are processes spinning a core (or half of one: busy 20 ms, asleep 20 ms), each in a
session of its own, as another user's or another terminal's work would be: the kernel's autogroup
scheduling gives each session its share, and `nice` within ours would not reach them.

The workloads: charnn's default training step (2x256 LSTM, 8 streams x 128, fused AdamW, clipping), the
evaluation of that model, and sampling from it with the numpy engine, 1 stream and 32.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..runtime.threads import available_cores

WORKLOADS = ("train", "eval", "sample 1", "sample 32")
LOADS = {"idle": (), "half a core": ("half",), "one core": ("full",), "two cores": ("full", "full")}
SPIN = {"full": "while True: pass",
        "half": "import time\nwhile True:\n    end = time.perf_counter() + 0.02\n"
                "    while time.perf_counter() < end: pass\n    time.sleep(0.02)"}
VOCAB = 96


def thread_modes() -> dict[str, str]:
    """The columns: one thread, all of them, and charnn's policy (the --threads each is run with)."""
    return {"1 thread": "1", "all threads": str(available_cores()), "policy": "auto"}


@contextmanager
def competitors(kinds: tuple[str, ...]) -> Iterator[None]:
    """Spinning processes beside the measurement, each in a session of its own; stopped afterwards."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN[kind]], start_new_session=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for kind in kinds]
    try:
        time.sleep(0.5 if procs else 0)  # let them get going
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _environment() -> dict[str, str]:
    """The measured process's environment: the user's thread settings out, so --threads decides."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "CHARNN_THREADS")}
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def measure(work: str, threads: str, seconds: float) -> float:
    """Characters a second of `work` in a fresh process on `threads` ('auto': the policy)."""
    done = subprocess.run([sys.executable, "-m", "charnn.bench.busy", work, threads, str(seconds)],
                          capture_output=True, text=True, env=_environment(), timeout=seconds * 10 + 120,
                          cwd=tempfile.gettempdir())
    if done.returncode != 0:
        raise RuntimeError(f"{work} on {threads} threads failed: {done.stderr.strip()[-500:]}")
    return float(done.stdout.split()[-1])


def plan_shape(corpus: Path, budget: str = "10m", before: Path | None = None, runs: Path | None = None) -> str:
    """The shape `charnn train CORPUS --max-time BUDGET --dry-run` chooses ('2x256 d0.1'); with `before`,
    the charnn checkout there chooses; with `runs`, a runs root whose speed memory the plan reads and adds to."""
    env = _environment()
    if runs is not None:
        env["CHARNN_RUNS_DIR"] = str(runs)
    if before is not None:
        env["PYTHONPATH"] = str(before)
    done = subprocess.run([sys.executable, "-m", "charnn", "train", str(Path(corpus).resolve()), "--max-time",
                           budget, "--dry-run"], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tempfile.gettempdir())  # `-m` puts the working directory first: not a checkout
    shape = re.search(r"size \w+: (\d+x\d+) ", done.stderr)
    dropout = re.search(r"--dropout ([\d.]+)", done.stderr)
    if done.returncode != 0 or shape is None:
        raise RuntimeError(f"--dry-run failed: {done.stderr.strip()[-500:]}")
    return f"{shape.group(1)} d{dropout.group(1) if dropout else '?'}"


def synthetic_corpus(path: Path, chars: int = 1_115_394, vocab: int = 65) -> Path:
    """Random text of Tiny Shakespeare's size and alphabet size, for plans (which see only the sizes)."""
    import numpy as np  # noqa: PLC0415

    letters = np.frombuffer(bytes(range(32, 32 + vocab - 1)) + b"\n", dtype=np.uint8)
    path.write_bytes(letters[np.random.default_rng(0).integers(0, vocab, chars)].tobytes())
    return path


@dataclass
class BusyReport:
    """Characters a second by workload, load and thread mode (the median of the repeats, each of which is
    kept in `samples`); the plans chosen under each load."""

    rates: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # work -> load -> mode -> rate
    samples: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)  # ... -> every repeat
    plans: dict[str, list[str]] = field(default_factory=dict)  # load -> the shapes chosen, one a try
    plans_before: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"rates": self.rates, "samples": self.samples, "plans": self.plans, "plans_before": self.plans_before}

    def add(self, work: str, load: str, mode: str, rate: float) -> None:
        kept = self.samples.setdefault(work, {}).setdefault(load, {}).setdefault(mode, [])
        kept.append(round(rate, 1))
        self.rates.setdefault(work, {}).setdefault(load, {})[mode] = round(statistics.median(kept), 1)

    def policy_share(self, work: str, load: str) -> float:
        """The policy's speed over the better fixed count's."""
        row = self.rates[work][load]
        return row["policy"] / max(row["1 thread"], row["all threads"])


@dataclass(frozen=True)
class Plans:
    """The plans a busy benchmark takes under each load: `tries` of `corpus` at ten minutes, in the runs
    root `runs` if given (its speed memory), and with the charnn checkout `before` too, if given."""

    corpus: Path
    tries: int
    runs: Path | None = None
    before: Path | None = None


def run_busy(seconds: float, plans: Plans | None = None, loads: dict = LOADS, workloads: tuple[str, ...] = WORKLOADS,
             repeats: int = 1, log: Callable[[str], None] = lambda message: None) -> BusyReport:
    """The matrix: every workload under every load at every thread mode, `repeats` times (the modes of a
    cell one after another, their order turning each time, so that a neighbour's slower or quicker
    minute falls on all of them alike), then the `plans` under every load: the idle load's come first
    and begin the speed memory of their runs root, as a user's first runs would."""
    report, modes = BusyReport(), list(thread_modes().items())
    for load, kinds in loads.items():
        with competitors(kinds):
            for work in workloads:
                for repeat in range(repeats):
                    for mode, threads in modes[repeat % len(modes):] + modes[:repeat % len(modes)]:
                        log(f"{work}, {mode}, beside {load}" + (f" ({repeat + 1} of {repeats})" if repeats > 1 else ""))
                        report.add(work, load, mode, measure(work, threads, seconds))
            for _ in range(plans.tries if plans is not None else 0):
                log(f"planning {plans.corpus.name}, beside {load}")
                report.plans.setdefault(load, []).append(plan_shape(plans.corpus, runs=plans.runs))
                if plans.before is not None:
                    report.plans_before.setdefault(load, []).append(plan_shape(plans.corpus, before=plans.before))
    return report


# --- the measured process -----------------------------------------------------------------------


def _work_unit(work: str, threads: str) -> Callable[[], int]:
    """A unit of `work` on `threads`, which returns the characters it did."""
    import torch  # noqa: PLC0415

    from ..runtime.device import torch_thread_policy  # noqa: PLC0415
    from ..model.network import CharRNN  # noqa: PLC0415
    from ..plan.shapes import Shape  # noqa: PLC0415
    from ..runtime.threads import resolve_threads  # noqa: PLC0415

    choice = resolve_threads(threads)
    torch.manual_seed(0)
    model = CharRNN(Shape(2, 256, 8, 128).model_config(VOCAB, dropout=0.1))
    if work == "train":
        from ..plan.speed import _training_step  # noqa: PLC0415
        from ..runtime.threads import TimedUnit  # noqa: PLC0415

        step, policy = _training_step(Shape(2, 256, 8, 128), VOCAB, torch.device("cpu")), torch_thread_policy(
            torch.device("cpu"), choice)

        def train() -> int:
            with TimedUnit(policy, 1024):
                step()
            return 1024
        return train
    if work == "eval":
        from ..evaluate.score import evaluate  # noqa: PLC0415

        tokens, policy = torch.randint(0, VOCAB, (50_001,)), torch_thread_policy(torch.device("cpu"), choice)
        return lambda: evaluate(model, tokens, threads=policy).chars
    from ..model.stepper import engine_from_model  # noqa: PLC0415
    from ..generate.streams import Streams  # noqa: PLC0415

    streams = Streams.start(engine_from_model(model, choice), num_samples=int(work.split()[1]), seed=0)
    streams.feed([1, 2, 3])
    return lambda: sum(len(ids) for ids in streams.sample(50))


def _run_worker(work: str, threads: str, seconds: float) -> float:
    unit = _work_unit(work, threads)
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        done += unit()
    return done / (time.perf_counter() - started)


if __name__ == "__main__":
    print(f"{_run_worker(sys.argv[1], sys.argv[2], float(sys.argv[3])):.1f}")
