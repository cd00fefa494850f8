"""Data-parallel scaling on this machine: chars/s of `charnn train` with one process and with N
processes (`--nproc N`), the same global batch, one thread per process, timed in the same run.

    python scripts/scaling.py                  # 1 vs 2 CPU processes, the default 2x256 model
    python scripts/scaling.py --nproc 4 --device cuda --batch-size 64

Prints a table; the figures are the median of the training log lines after the first (warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def train_rate(corpus: Path, workdir: Path, name: str, nproc: int, threads: int, args: argparse.Namespace) -> float:
    run = workdir / name
    command = [sys.executable, "-m", "charnn", "train", str(corpus), "--out", str(run), "--overwrite", "-q",
               "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--log-every", "10",
               "--eval-every", str(10 * args.steps), "--device", args.device]
    if nproc > 1:
        command += ["--nproc", str(nproc)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CHARNN_RUNS_DIR": str(workdir / "runs")}
    subprocess.run(command, check=True, env=env)
    logs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["chars_per_sec"] for r in logs if r["kind"] == "train"][1:]
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="global batch (streams), split between processes")
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--corpus", type=Path, default=REPO / "corpora" / "tinyshakespeare.txt")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rows.append(("1 process, 1 thread", train_rate(args.corpus, workdir, "one", 1, 1, args)))
        rows.append((f"{args.nproc} processes, 1 thread each", train_rate(args.corpus, workdir, "many", args.nproc, 1, args)))
        rows.append((f"1 process, {args.nproc} threads", train_rate(args.corpus, workdir, "threads", 1, args.nproc, args)))
    base = rows[0][1]
    print(f"charnn train, default model, global batch {args.batch_size}, {args.steps} steps, {args.device}")
    print(f"{'configuration':<28} {'chars/s':>10} {'vs 1 process':>13}")
    for label, rate in rows:
        print(f"{label:<28} {rate:>10,.0f} {rate / base:>12.2f}x")


if __name__ == "__main__":
    main()
