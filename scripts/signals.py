"""Signals at random moments: how often a command fails to end with its exit code and one line.

    python scripts/signals.py                       # SIGTERM to `sample --interactive`, 200 times
    python scripts/signals.py --command eval --signal INT --runs 40 --load 2

Trains a tiny run in a temporary directory, then starts the command again and again and sends the
signal after a random delay: for `sample --interactive` counted from the start (the signal lands while
Python starts, imports, loads the model or waits at the prompt); for `eval` counted from the moment
PyTorch's library is mapped (the signal lands while PyTorch imports, or while it scores). `--load N`
keeps N busy processes beside it, as a loaded CI machine would. Each wrong ending is printed: a
hang, another exit code, a traceback, or a last line that is not "charnn: interrupted/terminated".
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = ["--max-steps", "30", "--layers", "1", "--hidden-size", "32", "--batch-size", "4", "--seq-len", "16",
        "--eval-every", "15", "--device", "cpu", "-q"]
WORDS = {signal.SIGINT: (130, "charnn: interrupted"), signal.SIGTERM: (143, "charnn: terminated")}


def charnn(*args) -> list[str]:
    return [sys.executable, "-m", "charnn", *map(str, args)]


def wait_for_torch(process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if "libtorch" in Path(f"/proc/{process.pid}/maps").read_text():
                return
        except OSError:
            return
        time.sleep(0.01)


def one(command: str, run: Path, text: Path, signum: int, delay: float) -> str | None:
    """None if the command ended as it should; else what went wrong."""
    args = charnn("sample", run, "--interactive") if command == "sample" else charnn("eval", run, text)
    process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               cwd=run.parent)  # not this checkout: PYTHONPATH may name another charnn
    if command == "eval":
        wait_for_torch(process)
    time.sleep(delay)
    process.send_signal(signum)
    try:
        err = process.communicate(timeout=30)[1].decode(errors="replace")
    except subprocess.TimeoutExpired:
        process.kill()
        return "hung for 30 s"
    code, word = WORDS[signum]
    if process.returncode == -signum and not err.strip():
        return None  # killed before Python started charnn: the shell shows the same $?
    if process.returncode != code or "Traceback" in err or not err.rstrip().endswith(word):  # after "> " perhaps
        return f"exit {process.returncode}: {err.strip()[-300:]!r}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--command", choices=("sample", "eval"), default="sample")
    parser.add_argument("--signal", choices=("INT", "TERM"), default="TERM")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--low", type=float, default=0.1, help="shortest delay, seconds")
    parser.add_argument("--high", type=float, default=0.8, help="longest delay, seconds")
    parser.add_argument("--load", type=int, default=0, help="busy processes to run beside it")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    signum = signal.SIGINT if options.signal == "INT" else signal.SIGTERM
    rng = random.Random(options.seed)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(options.load)]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            corpus, text = root / "corpus.txt", root / "big.txt"
            corpus.write_bytes((REPO / "corpora" / "tinyshakespeare.txt").read_bytes()[:20_000])
            text.write_bytes(corpus.read_bytes() * 500)  # seconds to score
            subprocess.run(charnn("train", corpus, *TINY, "--out", root / "run"), check=True, cwd=root)
            wrong = 0
            for i in range(options.runs):
                delay = rng.uniform(options.low, options.high)
                problem = one(options.command, root / "run", text, signum, delay)
                if problem:
                    wrong += 1
                    print(f"run {i}, signal after {delay:.2f} s: {problem}", flush=True)
    finally:
        for process in busy:
            process.kill()
    print(f"{options.command} SIG{options.signal}: {options.runs - wrong} of {options.runs} ended as they should "
          f"({wrong} wrong), with {options.load} busy processes beside them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
