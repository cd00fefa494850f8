#!/usr/bin/env python3
"""Soak test: train for a set time under random SIGKILL, SIGINT and SIGTERM, resuming after each,
then check that nothing was lost: the run must end bit for bit where one uninterrupted run ends.

    python scripts/soak.py                          # 5 minutes on Tiny Shakespeare, kills every 3-15 s
    python scripts/soak.py --minutes 60 --kill-every 10 120 --out /tmp/soak

After every kill it checks that last.pt and best.pt load and that last.pt never goes back in steps.
At the end it stops the run with SIGINT at some step S, trains the same configuration without a
break to exactly S in this process, and compares every weight and every logged loss. Exit status 0
means identical; anything else prints what differs. Not part of the test suite: it takes minutes.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charnn import TrainConfig, load_checkpoint, start_training  # noqa: E402

MODEL = {"cell": "lstm", "num_layers": 2, "hidden_size": 128, "embed_size": 64, "dropout": 0.1}
TRAIN = {"batch_size": 16, "seq_len": 64, "eval_every": 200, "save_every_steps": 25, "log_every": 5, "seed": 7,
         "max_steps": 10**9, "device": "cpu"}
EXPECTED_EXIT = {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: 130, signal.SIGTERM: 143}


def cli_args(corpus: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "charnn", "train", str(corpus), "--out", str(out), "--quiet",
            "--cell", MODEL["cell"], "--layers", str(MODEL["num_layers"]), "--hidden-size", str(MODEL["hidden_size"]),
            "--embed-size", str(MODEL["embed_size"]), "--dropout", str(MODEL["dropout"]),
            "--batch-size", str(TRAIN["batch_size"]), "--seq-len", str(TRAIN["seq_len"]),
            "--eval-every", str(TRAIN["eval_every"]), "--save-every", str(TRAIN["save_every_steps"]),
            "--log-every", str(TRAIN["log_every"]), "--seed", str(TRAIN["seed"]),
            "--max-steps", str(TRAIN["max_steps"]), "--device", TRAIN["device"]]


def saved_step(run: Path) -> int:
    return load_checkpoint(run / "last.pt")["step"]


def timeless(run: Path) -> list[dict]:
    records = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        for key in ("elapsed", "chars_per_sec", "eval_seconds"):
            record.pop(key, None)
        records.append(record)
    return records


def soak(corpus: Path, run: Path, seconds: float, kill_every: tuple[float, float], rng: random.Random) -> dict:
    counts = {s.name: 0 for s in EXPECTED_EXIT}
    start, last_step, restarts = time.monotonic(), -1, 0
    command = cli_args(corpus, run)
    while True:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        final = time.monotonic() - start + kill_every[1] > seconds
        time.sleep(max(seconds - (time.monotonic() - start), 1.0) if final else rng.uniform(*kill_every))
        signum = signal.SIGINT if final else rng.choice(list(EXPECTED_EXIT))
        process.send_signal(signum)
        stderr = process.communicate(timeout=300)[1].decode(errors="replace")
        if process.returncode != EXPECTED_EXIT[signum]:
            raise SystemExit(f"{signum.name}: exit {process.returncode}, expected {EXPECTED_EXIT[signum]}\n{stderr}")
        if "Traceback" in stderr:
            raise SystemExit(f"{signum.name}: traceback on stderr\n{stderr}")
        counts[signum.name] += 1
        step = saved_step(run)  # loads, or the soak fails here
        if (run / "best.pt").exists():
            load_checkpoint(run / "best.pt")
        if step < last_step:
            raise SystemExit(f"last.pt went back from step {last_step} to {step} after {signum.name}")
        last_step = step
        print(f"{time.monotonic() - start:7.1f}s  {signum.name:7s}  last.pt at step {step:,}", flush=True)
        if final:
            return {"kills": counts, "restarts": restarts, "final_step": step}
        command = [sys.executable, "-m", "charnn", "train", "--resume", str(run), "--quiet"]
        restarts += 1


def reference(corpus: Path, run: Path, steps: int) -> None:
    training = start_training([str(corpus)], MODEL, TrainConfig(**TRAIN), out=run, overwrite=True)
    trainer = training.trainer
    trainer.should_stop = lambda: "interrupted" if trainer.state.step >= steps else None
    training.run()


def compare(soaked: Path, straight: Path) -> list[str]:
    problems = []
    ours = load_checkpoint(soaked / "last.pt")["model_state"]
    theirs = load_checkpoint(straight / "last.pt")["model_state"]
    for key in theirs:
        if not torch.equal(ours[key], theirs[key]):
            problems.append(f"weight {key} differs (max abs diff {(ours[key] - theirs[key]).abs().max().item():.3g})")
    a, b = timeless(soaked), timeless(straight)
    if a != b:
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        problems.append(f"metrics differ from record {first}: {a[first:first + 1]} vs {b[first:first + 1]}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, default=REPO / "corpora" / "tinyshakespeare.txt")
    parser.add_argument("--minutes", type=float, default=5.0, help="how long to soak (default 5)")
    parser.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 15.0), metavar=("MIN", "MAX"),
                        help="seconds between kills, drawn uniformly (default 3 15)")
    parser.add_argument("--out", type=Path, default=Path("runs/soak"), help="where to put the two runs")
    parser.add_argument("--seed", type=int, default=0, help="seed for the kill schedule")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    soaked, straight = args.out / "soaked", args.out / "straight"
    started = time.monotonic()
    summary = soak(args.corpus, soaked, args.minutes * 60, tuple(args.kill_every), random.Random(args.seed))
    print(f"soaked {time.monotonic() - started:.0f}s: {summary['restarts']} resumes, kills {summary['kills']}; "
          f"training again without a break to step {summary['final_step']:,}", flush=True)
    reference(args.corpus, straight, summary["final_step"])
    problems = compare(soaked, straight)
    problems += [f"temporary file left behind: {p}" for p in soaked.glob(".*.tmp")]
    for problem in problems:
        print(f"MISMATCH: {problem}")
    if not problems:
        print(f"identical: every weight and all {len(timeless(soaked))} metrics records match the uninterrupted run")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
