#!/usr/bin/env python3
"""Print a run's validation curve against time and steps, from its metrics.jsonl.

    python scripts/curve.py runs/tinyshakespeare            # table on stdout
    python scripts/curve.py runs/tinyshakespeare --json     # the eval records as JSON lines
"""

import argparse
import json
import math
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="run directory")
    parser.add_argument("--json", action="store_true", help="print the eval records as JSON lines")
    args = parser.parse_args()
    metrics = args.run / "metrics.jsonl"
    if not metrics.is_file():
        print(f"{metrics}: not found", file=sys.stderr)
        return 1
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [r for r in records if r["kind"] == "eval"]
    trains = {r["step"]: r for r in records if r["kind"] == "train"}
    if args.json:
        for record in evals:
            print(json.dumps(record))
        return 0
    print(f"{'minutes':>8} {'step':>7} {'epoch':>6} {'train loss':>10} {'val loss':>9} {'val bpc':>8}")
    for r in evals:
        train = trains.get(r["step"])
        train_loss = f"{train['loss']:.4f}" if train else "-"
        print(f"{r['elapsed'] / 60:8.2f} {r['step']:7d} {r['epoch']:6.2f} {train_loss:>10} "
              f"{r['val_loss']:9.4f} {r['val_loss'] / math.log(2):8.4f}")
    if evals:
        best = min(evals, key=lambda r: r["val_loss"])
        print(f"best validation loss {best['val_loss']:.4f} nats/char ({best['val_loss'] / math.log(2):.4f} bpc) "
              f"at step {best['step']}, {best['elapsed'] / 60:.1f} minutes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
