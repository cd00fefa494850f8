"""Fine-tuning from the English base model against training from nothing, on small corpora it never saw.

    apt-get install wamerican bible-kjv          # the names' and the verse's sources
    python scripts/finetune.py corpora           # build the corpora in runs/finetune/corpora, print their sizes
    python scripts/finetune.py lr                # the fine-tuning learning rate and warm-up, on pydocs-200k
    python scripts/finetune.py run               # scratch and --init-from english at 2 and 5 minutes
    python scripts/finetune.py table             # the README's table, from what the runs left

The corpora (built here, reproducibly; nothing large is committed): `stdlib-200k` (code: the first 200 KB
of the .py files of Python 3.11's standard library, from the interpreter running this script), `names`
(every capitalised entry without an apostrophe of Debian's wamerican word list: people's and places'
names, one a line, in a seeded random order, 79 KB) and `psalms-200k` (verse: the first 200 KB of the
Psalms in the King James Version, from Debian's bible-kjv). `pydocs-200k` (the first 200 KB of Python's reStructuredText
documentation, from Debian's python3.11-doc) only chooses the learning rate, so the table's corpora do
not. Each run is `charnn train CORPUS --max-time T` with everything else its default, started afresh or
`--init-from english`; its score is `charnn eval RUN` on the corpus's last 10% (the validation text,
the same in both), in float32. `run` needs a quiet machine: the budgets are wall-clock time; the
scratch and fine-tuned runs take turns, so a change in the load hits both.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "runs" / "finetune"
BUDGETS = ("2m", "5m")
LR_GRID = (("5e-4", "50"), ("1e-3", "50"), ("2e-3", "100"))  # the last: the defaults from nothing


def stdlib_200k(out: Path) -> None:
    root = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join(path.read_bytes() for path in sorted(root.glob("*.py")))
    out.write_bytes(_cut(data, 200_000))


def names(out: Path) -> None:
    words = Path("/usr/share/dict/american-english").read_text(encoding="utf-8").split("\n")
    chosen = [w for w in words if w[:1].isupper() and w[1:].islower() and "'" not in w]
    # the list is sorted: in its order the last 10% (the validation text) would be the names from T to Z,
    # and every name would follow one sharing its first letters. A seeded shuffle makes it a list of names
    random.Random(0).shuffle(chosen)
    out.write_text("".join(w + "\n" for w in chosen), encoding="utf-8")


def psalms_200k(out: Path) -> None:
    text = subprocess.run(["bible", "Ps1:1-150:6"], capture_output=True, check=True).stdout
    out.write_bytes(_cut(text.lstrip(b"\n"), 200_000))


def pydocs_200k(out: Path) -> None:
    root = Path("/usr/share/doc/python3.11/html/_sources")
    data = b"".join(path.read_bytes() for path in sorted(root.rglob("*.rst.txt")))
    out.write_bytes(_cut(data, 200_000))


def _cut(data: bytes, size: int) -> bytes:
    data = data[:size]
    return data[: data.rindex(b"\n") + 1]


CORPORA = {"stdlib-200k": stdlib_200k, "names": names, "psalms-200k": psalms_200k}
TUNING = {"pydocs-200k": pydocs_200k}


def corpus(name: str) -> Path:
    path = WORK / "corpora" / f"{name}.txt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        {**CORPORA, **TUNING}[name](path)
    return path


def charnn(*args: str) -> str:
    env = {**os.environ, "CHARNN_RUNS_DIR": str(WORK / "runs"), "PYTHONPATH": str(REPO)}
    WORK.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-m", "charnn", *args], env=env, check=True, capture_output=True, cwd=WORK,
                          text=True, stdin=subprocess.DEVNULL).stdout


def train(name: str, label: str, *options: str) -> Path:
    """A run of `name` (skipped if done), and its score: `charnn eval` on the validation text."""
    run, done = WORK / "runs" / f"{name}-{label}", WORK / "done" / f"{name}-{label}.json"
    if not done.is_file():
        charnn("train", str(corpus(name)), *options, "--out", str(run), "--overwrite", "--quiet")
        loss = json.loads(charnn("eval", str(run), "--json"))["loss"]
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps({"loss": loss, "options": list(options)}))
    return done


def loss(name: str, label: str) -> float | None:
    done = WORK / "done" / f"{name}-{label}.json"
    return json.loads(done.read_text())["loss"] if done.is_file() else None


def tune_lr() -> None:
    for name in TUNING:
        for lr, warmup in LR_GRID:
            train(name, f"lr{lr}-w{warmup}", "--init-from", "english", "--max-time", "2m", "--lr", lr,
                  "--warmup-steps", warmup)
            print(f"{name}: lr {lr}, warm-up {warmup}: {loss(name, f'lr{lr}-w{warmup}'):.4f} nats/char")


def run_all() -> None:
    for budget in BUDGETS:
        for name in CORPORA:
            train(name, f"scratch-{budget}", "--max-time", budget)
            train(name, f"english-{budget}", "--init-from", "english", "--max-time", budget)
            print(f"{name} {budget}: scratch {loss(name, f'scratch-{budget}'):.4f}, "
                  f"english {loss(name, f'english-{budget}'):.4f}", file=sys.stderr)


def table() -> None:
    print("| corpus | size | budget | from scratch | from `english` | difference |\n| --- | ---: | --- | ---: | ---: | ---: |")
    for budget in BUDGETS:
        for name in CORPORA:
            scratch, tuned = loss(name, f"scratch-{budget}"), loss(name, f"english-{budget}")
            if None in (scratch, tuned):
                continue
            size = corpus(name).stat().st_size / 1000
            print(f"| {name} | {size:,.0f} KB | {budget.replace('m', ' min')} | {scratch:.3f} | {tuned:.3f} | "
                  f"{tuned - scratch:+.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=("corpora", "lr", "run", "table"))
    args = parser.parse_args()
    if args.part == "corpora":
        for name in {**CORPORA, **TUNING}:
            path = corpus(name)
            text = path.read_text(encoding="utf-8")
            print(f"{name:>12} {path.stat().st_size:>9,} bytes {len(set(text)):>4} characters "
                  f"{len(re.findall(chr(10), text)):>7,} lines")
    elif args.part == "lr":
        tune_lr()
    elif args.part == "run":
        run_all()
    else:
        table()


if __name__ == "__main__":
    main()
