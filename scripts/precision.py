"""Mixed precision against float32: the speed of the default training step, and the quality at equal steps
and at equal time.

    python scripts/precision.py speed [--rounds 5]           # step timings, alternating, 1 and all threads
    python scripts/precision.py time [--minutes 10]          # equal time: fp32 and bf16 --max-time, taking turns
    nice -n 19 python scripts/precision.py steps             # equal steps: the steps fp32 took, in both precisions
    python scripts/precision.py table                        # the tables, from what the runs left
    python scripts/precision.py steps --seed 7 --corpus tinyshakespeare   # another seed, beside the first

`time` needs a quiet machine (its budget is wall-clock time); `steps` trains with --max-steps, so its
results do not depend on the load and it may run in the background. Every run is `--size small` (the
fixed 2x256 default) with the same seed and the same evaluation (every 1,000 steps, the first 200,000
validation characters); the table scores each run's best.pt with `charnn eval` on its whole validation
text in float32. The corpora: Tiny Shakespeare, War and Peace and `pystdlib` (scripts/sizing.py builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
WORK = REPO / "runs" / "precision"
CORPORA = {"tinyshakespeare": REPO / "corpora" / "tinyshakespeare.txt",
           "warandpeace": REPO / "corpora" / "warandpeace.txt",
           "pystdlib": REPO / "runs" / "sizing" / "corpora" / "pystdlib.txt"}
COMMON = ["--size", "small", "--eval-every", "1000", "--eval-chars", "200000", "--quiet"]
SEED = 1337


def charnn(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CHARNN_RUNS_DIR": str(WORK / "runs"), "PYTHONPATH": str(REPO)}
    WORK.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "charnn", *args], env=env, check=True, capture_output=True, text=True,
                          cwd=WORK,
                          stdin=subprocess.DEVNULL)


def speed(rounds: int) -> None:
    """The default step (2x256, 8 x 128, fused AdamW, clipping), fp32 and the mixed precision taking turns,
    at one thread and at all; the median of `rounds` timings of a second each."""
    import torch  # noqa: PLC0415

    from charnn.model.precision import mixed_candidate  # noqa: PLC0415
    from charnn.plan.shapes import Shape  # noqa: PLC0415
    from charnn.plan.speed import time_training  # noqa: PLC0415
    from charnn.runtime.threads import available_cores  # noqa: PLC0415

    cpu, shape = torch.device("cpu"), Shape(2, 256, 8, 128)
    mixed = mixed_candidate(cpu) or "bf16"
    print(f"| threads | fp32 chars/s | {mixed} chars/s | ratio |\n| ---: | ---: | ---: | ---: |")
    for threads in sorted({1, available_cores()}):
        rates: dict[str, list[float]] = {"fp32": [], mixed: []}
        for _ in range(rounds):
            for precision in rates:
                rates[precision].append(time_training(shape, 65, cpu, 1.0, threads=threads,
                                                      precision=precision).chars_per_sec)
        fp32, low = (statistics.median(rates[p]) for p in ("fp32", mixed))
        print(f"| {threads} | {fp32:,.0f} | {low:,.0f} | {low / fp32:.2f}x |")


def run_dir(corpus: str, label: str) -> Path:
    return WORK / "runs" / f"{corpus}-{label}"


def seeded(label: str, seed: int) -> str:
    """A run's label with its seed, where the seed is not the first one's."""
    return label if seed == SEED else f"{label}-seed{seed}"


def train(corpus: str, label: str, seed: int, *limits: str) -> None:
    """A run, unless a finished one is there (a run cut short is trained again from the start)."""
    label = seeded(label, seed)
    out, done = run_dir(corpus, label), WORK / "done" / f"{corpus}-{label}"
    if done.is_file() and (out / "best.pt").is_file():
        return
    charnn("train", str(CORPORA[corpus]), *COMMON, "--seed", str(seed), *limits, "--out", str(out), "--overwrite")
    done.parent.mkdir(parents=True, exist_ok=True)
    done.write_text("finished\n")


def steps_of(corpus: str, label: str) -> int:
    records = [json.loads(line) for line in (run_dir(corpus, label) / "metrics.jsonl").read_text().splitlines()]
    return max(r["step"] for r in records if r["kind"] == "eval")


def equal_time(minutes: float, mixed: str, corpora: list[str], seed: int) -> None:
    for corpus in corpora:
        for precision in ("fp32", mixed):  # taking turns, so a change in the machine's load hits both
            print(f"{corpus}: {precision} for {minutes:g} minutes, seed {seed}", file=sys.stderr)
            train(corpus, f"{precision}-time", seed, "--precision", precision, "--max-time", f"{minutes:g}m")


def equal_steps(mixed: str, corpora: list[str], seed: int) -> None:
    """The steps the first seed's fp32 run took in its time, whatever the seed."""
    for corpus in corpora:
        if not (run_dir(corpus, "fp32-time") / "metrics.jsonl").is_file():
            continue
        steps = str(steps_of(corpus, "fp32-time"))
        for precision in ("fp32", mixed):
            print(f"{corpus}: {precision} for {steps} steps, seed {seed}", file=sys.stderr)
            train(corpus, f"{precision}-steps", seed, "--precision", precision, "--max-steps", steps)


def score(corpus: str, label: str) -> float | None:
    run = run_dir(corpus, label)
    if not (run / "best.pt").is_file():
        return None
    return json.loads(charnn("eval", str(run), "--json", "--threads", "auto").stdout)["loss"]


def table(mixed: str, corpora: list[str], seed: int) -> None:
    print(f"| corpus | fp32 steps | fp32, equal steps | {mixed}, equal steps | difference | fp32, 10 min | "
          f"{mixed}, 10 min | difference | {mixed} steps in 10 min |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for corpus in corpora:
        losses = {label: score(corpus, seeded(label, seed)) for label in
                  ("fp32-steps", f"{mixed}-steps", "fp32-time", f"{mixed}-time")}
        cells = [corpus, _steps(corpus, seeded("fp32-time", seed))]
        for a, b in (("fp32-steps", f"{mixed}-steps"), ("fp32-time", f"{mixed}-time")):
            cells += [_loss(losses[a]), _loss(losses[b]),
                      f"{losses[b] - losses[a]:+.4f}" if None not in (losses[a], losses[b]) else ""]
        print("| " + " | ".join(cells + [_steps(corpus, seeded(f"{mixed}-time", seed))]) + " |")


def _loss(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _steps(corpus: str, label: str) -> str:
    return f"{steps_of(corpus, label):,}" if (run_dir(corpus, label) / "metrics.jsonl").is_file() else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("speed", "time", "steps", "table"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--mixed", default="bf16", help="the mixed precision to compare (default bf16)")
    parser.add_argument("--seed", type=int, default=SEED, help=f"the runs' seed (default {SEED}); runs with "
                        "another are kept beside the first seed's")
    parser.add_argument("--corpus", action="append", choices=list(CORPORA),
                        help="only this corpus (repeatable; default all three)")
    args = parser.parse_args()
    corpora = args.corpus or list(CORPORA)
    if args.part == "speed":
        speed(args.rounds)
    elif args.part == "time":
        equal_time(args.minutes, args.mixed, corpora, args.seed)
    elif args.part == "steps":
        equal_steps(args.mixed, corpora, args.seed)
    else:
        table(args.mixed, corpora, args.seed)


if __name__ == "__main__":
    main()
