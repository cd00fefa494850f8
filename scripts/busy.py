"""charnn on a busy machine: speeds beside busy neighbours, the stability of the --size auto plan, and the
share of a time budget evaluation takes.

    python scripts/busy.py                          # the speed matrix (medians of 5) and 10 plans a load (~75 min)
    python scripts/busy.py --before ../charnn-old   # the plans of another checkout too, under the same loads
    python scripts/busy.py --whole-run              # + a ten-minute run beside two spinning processes
    python scripts/busy.py --eval-share big.txt     # + the evaluation's share of a --max-time 10m run on it

The competitors (processes spinning half a core, one core, two) are started and stopped here, each in a
session of its own, as another user's work would be (charnn.bench.busy). Run it on an otherwise idle
machine: the "idle" row assumes one. The plans run in a runs root of their own, idle first, so that
their speed memory starts empty and the idle plans begin it (charnn.plan.memory), as a user's first runs
would; the whole run gets a copy of it. Prints Markdown tables; --json FILE keeps the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charnn.plan import sizing  # noqa: E402
from charnn.bench.busy import LOADS, WORKLOADS, Plans, _environment, competitors, run_busy  # noqa: E402
from charnn.data.tokens import CACHE_DIR  # noqa: E402
from charnn.plan.memory import FILE_NAME  # noqa: E402
from charnn.plan.shapes import CPU_REFERENCE, CPU_SPEEDS, Shape, SpeedTable  # noqa: E402


def speed_table(report) -> str:
    lines = ["| work | beside | 1 thread | all threads | charnn's policy | policy / better fixed |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for work, loads in report.rates.items():
        for load, r in loads.items():
            lines.append(f"| {work} | {load} | {r['1 thread']:,.0f} | {r['all threads']:,.0f} | {r['policy']:,.0f} "
                         f"| {report.policy_share(work, load):.2f}x |")
    return "\n".join(lines)


def plan_table(report) -> str:
    lines = ["| beside | shapes chosen | same as idle | before: shapes chosen |", "| --- | --- | ---: | --- |"]
    idle = report.plans.get("idle", [])
    for load, shapes in report.plans.items():
        same = sum(shape.split()[0] == (idle[0].split()[0] if idle else None) for shape in shapes)
        before = report.plans_before.get(load, [])
        lines.append(f"| {load} | {_counted(shapes)} | {same} of {len(shapes)} | {_counted(before)} |")
    return "\n".join(lines)


def _counted(shapes: list[str]) -> str:
    return ", ".join(f"{shape} x{shapes.count(shape)}" for shape in dict.fromkeys(shapes))


def plans_memory(runs: Path) -> Path:
    """The speed memory the plans above read and wrote (charnn.plan.memory): their runs root's."""
    return runs / CACHE_DIR / FILE_NAME


def train_beside(corpus: Path, kinds: tuple[str, ...], workdir: Path, budget: str = "10m",
                 memory: Path | None = None) -> dict:
    """`charnn train CORPUS --max-time BUDGET` beside `kinds` of competitors, in a runs root of its own
    (with a copy of the speed memory `memory`, if given): its plan, the speed it saw over the whole run
    (training characters over training seconds), and the time its evaluations took."""
    run = workdir / f"run-{len(kinds)}-{corpus.stem}"
    env = {**_environment(), "CHARNN_RUNS_DIR": str(workdir / "runs")}
    if memory is not None and memory.is_file():
        (workdir / "runs" / CACHE_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(memory, workdir / "runs" / CACHE_DIR / FILE_NAME)
    with competitors(kinds):
        subprocess.run([sys.executable, "-m", "charnn", "train", str(corpus.resolve()), "--max-time", budget, "--out",
                        str(run), "--quiet"], env=env, check=True, stdin=subprocess.DEVNULL, cwd=workdir)
    config = json.loads((run / "config.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    # each log line's speed is over the characters since the one before, evaluations left out
    seconds = sum((r["chars"] - before) / r["chars_per_sec"]
                  for before, r in zip([0] + [r["chars"] for r in train], train) if r["chars_per_sec"] > 0)
    seen = train[-1]["chars"] / seconds
    return {"config": config, "seen": seen, "elapsed": evals[-1]["elapsed"],
            "eval_seconds": sum(r["eval_seconds"] for r in evals), "evaluations": len(evals)}


def plan_at_seen_speed(result: dict, factor: float = 1.0) -> str:
    """The shape the run's last decision would have made had it known the speed the run saw over its
    whole budget (times `factor`): the first plan's, or after a re-plan the re-plan's, for the rest of
    the budget it was made for. Only the speed differs from that decision."""
    sized, corpus = result["config"]["sizing"], result["config"]["corpus"]
    scale = sized["timings"][CPU_REFERENCE]["chars_per_sec"] / CPU_SPEEDS[CPU_REFERENCE]
    table = {**{k: v * scale for k, v in CPU_SPEEDS.items()},
             **{k: v["chars_per_sec"] for k, v in sized["timings"].items()}}
    model, train = result["config"]["model"], result["config"]["train"]
    trained = Shape(model["num_layers"], model["hidden_size"], train["batch_size"], train["seq_len"], model["cell"])
    # the speed seen over the table's speed for the shape trained (after a re-plan, not the one first planned)
    seen = factor * result["seen"]
    speeds = sizing.ScaledSpeeds(SpeedTable(table), seen / SpeedTable(table).chars_per_sec(trained))
    spent = (sized.get("replanned") or {}).get("elapsed", 0.0)
    situation = sizing.Situation(train_chars=corpus["train_tokens"], vocab_size=model["vocab_size"],
                                 budget=sizing.Budget(seconds=600.0), val_chars=corpus["val_tokens"], spent=spent)
    plan = sizing.choose(situation, speeds)
    return f"{plan.shape.num_layers}x{plan.shape.hidden_size} d{plan.model['dropout']}"


def same_choice_band(result: dict, shape_only: bool = False) -> tuple[float, float]:
    """How far the speed seen could have been off, down and up (as factors, in steps of 1%, to 0.5x and 2x),
    before the rule chose another plan (`shape_only`: another shape, layers x width) than at the speed
    seen: how close a call the whole run was."""
    def choice(factor: float) -> str:
        plan = plan_at_seen_speed(result, factor)
        return plan.split()[0] if shape_only else plan

    at_seen = choice(1.0)
    down = next((f / 100 for f in range(99, 49, -1) if choice(f / 100) != at_seen), 0.5)
    up = next((f / 100 for f in range(101, 201) if choice(f / 100) != at_seen), 2.0)
    return down, up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement (default 15)")
    parser.add_argument("--repeats", type=int, default=5, help="measurements of each cell, alternating; the table "
                        "shows their median (default 5)")
    parser.add_argument("--plans", type=int, default=10, help="--dry-run plans under each load (default 10)")
    parser.add_argument("--corpus", type=Path, default=REPO / "corpora" / "tinyshakespeare.txt")
    parser.add_argument("--before", type=Path, help="a checkout of charnn whose plans to take too")
    parser.add_argument("--whole-run", action="store_true", help="a ten-minute run beside two spinning processes")
    parser.add_argument("--eval-share", type=Path, metavar="CORPUS", help="a ten-minute run on CORPUS, idle")
    parser.add_argument("--no-speeds", action="store_true", help="only the plans (and the runs asked for)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="charnn-busy-") as tmp:
        # the plans' own runs root: a fresh speed memory that the idle plans begin (no leftover of earlier runs)
        runs = Path(tmp) / "runs"
        runs.mkdir()
        report = run_busy(args.seconds, Plans(args.corpus, args.plans, runs, args.before), repeats=args.repeats,
                          log=lambda m: print(m, file=sys.stderr), workloads=() if args.no_speeds else WORKLOADS)
        after_plans(args, report, plans_memory(runs))


def after_plans(args: argparse.Namespace, report, memory: Path) -> None:
    """The tables, then the runs asked for (the whole run with a copy of the plans' speed memory)."""
    figures = report.to_dict()
    print(speed_table(report), "", plan_table(report), sep="\n", flush=True)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    with tempfile.TemporaryDirectory(prefix="charnn-busy-") as tmp:
        if args.whole_run:
            result = train_beside(args.corpus, LOADS["two cores"], Path(tmp), memory=memory)
            replanned = result["config"]["sizing"].get("replanned")
            chosen = f"{result['config']['model']['num_layers']}x{result['config']['model']['hidden_size']} " \
                     f"d{result['config']['model']['dropout']}"
            band, shape_band = same_choice_band(result), same_choice_band(result, shape_only=True)
            at_seen = plan_at_seen_speed(result)
            figures["whole_run"] = {"chosen": chosen, "at_seen_speed": at_seen,
                                    "same_shape": chosen.split()[0] == at_seen.split()[0],
                                    "same_choice_from_to": band, "same_shape_from_to": shape_band,
                                    "seen_chars_per_sec": round(result["seen"], 1),
                                    "planned_chars_per_sec": result["config"]["sizing"]["chars_per_sec"],
                                    "memory": memory.is_file(), "replanned": replanned,
                                    "config": result["config"]}  # to judge it again: plan_at_seen_speed
            print(f"\nbeside two cores ({'with' if memory.is_file() else 'without'} the plans' speed memory): "
                  + (f"planned {replanned['first']}, then again after {replanned['elapsed']:.0f} s at "
                     f"{replanned['ratio']:.2f}x the planned speed; " if replanned else "")
                  + f"trained {chosen} at {figures['whole_run']['planned_chars_per_sec']:,.0f} chars/s planned; "
                  f"the run saw {result['seen']:,.0f}, at which the rule chooses {figures['whole_run']['at_seen_speed']} "
                  f"(the same from {band[0]:.2f}x to {band[1]:.2f}x that speed; its shape from {shape_band[0]:.2f}x "
                  f"to {shape_band[1]:.2f}x)")
        if args.eval_share:
            result = train_beside(args.eval_share, (), Path(tmp))
            share = result["eval_seconds"] / result["elapsed"]
            figures["eval_share"] = {"corpus": str(args.eval_share), "share": round(share, 4),
                                     "evaluations": result["evaluations"], "eval_seconds": result["eval_seconds"]}
            print(f"\nevaluation on {args.eval_share.name}: {result['evaluations']} evaluations, "
                  f"{result['eval_seconds']:.1f} s of {result['elapsed']:.0f} s ({share:.1%})")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
