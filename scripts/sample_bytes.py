"""`charnn sample`'s output, byte for byte, before and after a change to the sampling code.

    python scripts/sample_bytes.py record FILE [--runs DIR]   # train the runs (once), keep every case's output
    python scripts/sample_bytes.py check FILE [--runs DIR]    # the same cases again: any byte that differs

The runs (a character-level LSTM, one trained with --reset-on, a GRU and a byte-level model: small, trained
in seconds) are made once in DIR (default /tmp/charnn-sample-bytes) and then only read, so the code before
and the code after sample from the same weights. The cases are the README's sampling examples (with a
seed where the README gives none) and every sampling option alone and combined. Each case runs
`python -m charnn sample ...` in a process of its own, with whatever charnn is first on the path: put the
code before first with PYTHONPATH=DIR_OF_THAT_CHECKOUT. FILE holds each case's output (hex), so a
difference can be shown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO / "corpora" / "tinyshakespeare.txt"
TINY = ["--max-steps", "40", "--layers", "1", "--hidden-size", "32", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "20", "--log-every", "10", "--device", "cpu", "--precision", "fp32", "--threads", "1",
        "--seed", "5", "-q"]
RUNS = {"char": [], "records": ["--reset-on", "\\n\\n"], "gru": ["--cell", "gru", "--layers", "2"],
        "bytes": ["--bytes"]}

# (run, arguments, stdin)
CASES = [
    ("char", ["--temp", "0.8", "-n", "300", "--seed", "1"], b""),  # README: charnn sample --temp 0.8
    ("char", ["-n", "4000", "--seed", "2"], b""),  # README: charnn sample -n 4000 | grep -i love | head
    ("char", ["-n", "600", "--temp", "0.8", "--seed", "3"], b""),  # README: the quick start
    ("char", ["-n", "2000", "--seed", "1"], b""),  # README pipelines
    ("char", ["-n", "5000", "--seed", "2", "--stop", "\\n\\n"], b""),
    ("char", ["-n", "300", "--num-samples", "4", "--stop", "\\n", "--separator", "\\0", "--seed", "5"], b""),
    ("char", ["--prime-file", "-", "-n", "80", "--seed", "3", "--temp", "0.7"], b"The will to\n"),
    ("char", ["-n", "1000", "--seed", "6"], b""),
    ("char", ["-n", "5000", "--seed", "4"], b""),
    ("char", ["--prime", "The ", "-n", "200", "--seed", "7"], b""),  # README: sample english --prime "The "
    ("weights", ["-n", "200", "--seed", "8"], b""),  # README: charnn sample model.safetensors -n 200
    ("char", ["--temp", "0", "-n", "300", "--prime", "ROMEO:"], b""),
    ("char", ["--top-k", "5", "-n", "300", "--seed", "8"], b""),
    ("char", ["--top-k", "1000", "-n", "200", "--seed", "8"], b""),
    ("char", ["--top-p", "0.9", "--temp", "1.2", "-n", "300", "--seed", "9"], b""),
    ("char", ["--min-p", "0.2", "--temp", "0.8", "-n", "300", "--seed", "10"], b""),
    ("char", ["--top-k", "10", "--top-p", "0.8", "--min-p", "0.05", "--temp", "0.7", "-n", "300", "--seed", "18"],
     b""),
    ("char", ["--repetition-penalty", "1.3", "--repetition-window", "16", "-n", "300", "--seed", "11"], b""),
    ("char", ["--repetition-penalty", "1.5", "--repetition-window", "0", "-n", "300", "--seed", "12"], b""),
    ("char", ["--repetition-penalty", "1.2", "--temp", "0", "-n", "200", "--prime", "A"], b""),
    ("char", ["--beam", "4", "-n", "100", "--prime", "The "], b""),
    ("char", ["--beam", "3", "--repetition-penalty", "1.2", "-n", "100"], b""),
    ("char", ["--num-samples", "3", "-n", "200", "--seed", "13", "--temp", "0.9", "--top-k", "10"], b""),
    ("char", ["--num-samples", "3", "-n", "200", "--seed", "19", "--repetition-penalty", "1.4"], b""),
    ("char", ["--stop", "e", "-n", "400", "--seed", "4", "--prime", "A"], b""),
    ("char", ["--no-prime-echo", "--prime", "KING", "-n", "100", "--seed", "14"], b""),
    ("char", ["--drop-unknown", "--prime", "caf\u00e9 \u20ac1", "-n", "60", "--seed", "20"], b""),
    ("char", ["--interactive", "-n", "40", "--seed", "3"], b"ROMEO:\n\nKING\n/reset\nA\n"),
    ("char", ["--interactive", "-n", "30", "--seed", "21", "--repetition-penalty", "1.3", "--stop", "\\n"],
     b"To be\n\nor not\n"),
    ("records", ["-n", "300", "--seed", "15"], b""),
    ("records", ["--num-samples", "3", "-n", "200", "--seed", "16", "--stop", "\\n\\n"], b""),
    ("records", ["--beam", "3", "-n", "80"], b""),
    ("records", ["--repetition-penalty", "1.3", "-n", "200", "--seed", "17", "--prime", "A\n\nB"], b""),
    ("records", ["--interactive", "-n", "30", "--seed", "22"], b"A\n\n\nB\n"),
    ("gru", ["-n", "300", "--seed", "1", "--temp", "0.9"], b""),
    ("gru", ["--beam", "2", "-n", "60", "--prime", "T"], b""),
    ("bytes", ["-n", "300", "--seed", "2"], b""),
    ("bytes", ["--top-p", "0.95", "--num-samples", "2", "-n", "100", "--seed", "3"], b""),
]


def charnn(args: list[str], cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CHARNN_RUNS_DIR": str(cwd / "runs")}
    return subprocess.run([sys.executable, "-m", "charnn", *args], input=stdin, capture_output=True, cwd=cwd,
                          env=env, timeout=600)


def make_runs(root: Path) -> None:
    """The runs the cases sample from, trained once (by whatever charnn comes first on the path)."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.txt"
    if not corpus.exists():
        corpus.write_bytes(CORPUS.read_bytes()[:30_000])  # speeches apart by blank lines: records for --reset-on
    for name, extra in RUNS.items():
        if (root / name / "best.safetensors").is_file():
            continue
        result = charnn(["train", corpus, *TINY, *extra, "--out", root / name], root)
        if result.returncode != 0:
            sys.exit(f"training {name} failed: {result.stderr.decode()}")


def run_cases(root: Path) -> dict[str, str]:
    outputs = {}
    for run, args, stdin in CASES:
        model = root / "char" / "best.safetensors" if run == "weights" else root / run
        result = charnn(["sample", str(model), "--threads", "1", *args], root, stdin)
        key = " ".join([run, *args]) + (f" < {stdin!r}" if stdin else "")
        if result.returncode != 0:
            sys.exit(f"{key}: exit {result.returncode}: {result.stderr.decode()}")
        outputs[key] = result.stdout.hex()
    return outputs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mode", choices=("record", "check"))
    parser.add_argument("file", type=Path)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/charnn-sample-bytes"))
    args = parser.parse_args()
    root = args.runs.resolve()
    make_runs(root)
    outputs = run_cases(root)
    if args.mode == "record":
        args.file.write_text(json.dumps(outputs, indent=1) + "\n")
        print(f"{len(outputs)} cases recorded in {args.file}")
        return 0
    recorded = json.loads(args.file.read_text())
    differ = [key for key in recorded if outputs.get(key) != recorded[key]]
    for key in differ:
        print(f"DIFFERS: {key}")
    same = len(recorded) - len(differ)
    digest = hashlib.sha256("".join(outputs[k] for k in sorted(outputs)).encode()).hexdigest()[:16]
    print(f"{same} of {len(recorded)} cases byte-identical ({sum(len(v) // 2 for v in outputs.values()):,} bytes; "
          f"digest {digest})")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
