"""The big-corpus rows of `charnn bench`: encoding speed, and the time and peak memory of a short
training run on a large synthetic corpus, cold and then from the token cache.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def write_synthetic_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """ASCII lines of random words over a 65-character alphabet, `megabytes` MB, written in chunks."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-\n&3$\t", dtype=np.uint8)
    remaining = megabytes * 1_000_000
    with open(path, "wb") as f:
        while remaining > 0:
            n = min(remaining, 1 << 24)
            f.write(alphabet[rng.integers(0, len(alphabet), n)].tobytes())
            remaining -= n


# Runs `charnn` and reports its own peak memory. VmHWM is the peak of this program's memory alone:
# the parent's pages, which a forked child holds until it execs, count in getrusage's figure.
_MEASURED_CHILD = """
import resource, sys
from charnn.cli import main
code = main(sys.argv[1:])
try:
    with open("/proc/self/status") as f:
        peak_kb = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
sys.stderr.write(f"\\ncharnn-bench-peak-kb {peak_kb}\\n")
sys.exit(code)
"""


def _run_measured(args: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak resident MB) of `charnn ARGS` in a child process."""
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", _MEASURED_CHILD, *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    stderr = process.stderr.decode("utf-8", "replace")
    if process.returncode != 0:
        raise RuntimeError(f"charnn {' '.join(args)} failed ({process.returncode}): {stderr.strip()[-500:]}")
    peak_kb = int(stderr.rsplit("charnn-bench-peak-kb", 1)[1].split()[0])
    return seconds, peak_kb / 1024


def bench_corpora(sizes_mb, device: str, workdir: Path, log: Callable[[str], None], steps: int = 20) -> list[dict]:
    """Train a default model for a few steps on big synthetic corpora, twice: cold, then from the cache."""
    from ..data.tokens import encode_files  # noqa: PLC0415 (only this section needs it)

    rows = []
    for mb in sizes_mb:
        corpus = workdir / f"synthetic-{mb}mb.txt"
        log(f"writing a {mb} MB corpus")
        write_synthetic_corpus(corpus, mb)
        log(f"encoding {mb} MB")
        start = time.perf_counter()
        encoded = encode_files([str(corpus)], workdir / f"encoded-{mb}.npy", "char")
        encode_seconds = time.perf_counter() - start
        (workdir / f"encoded-{mb}.npy").unlink()
        env = dict(os.environ, CHARNN_RUNS_DIR=str(workdir / "runs"))
        row = {"megabytes": mb, "tokens": encoded.num_tokens,
               "encode_mb_per_sec": round(mb / encode_seconds, 1)}
        for attempt in ("first", "second"):
            log(f"training on {mb} MB ({attempt} start)")
            args = ["train", str(corpus), "--max-steps", str(steps),
                    "--eval-every", str(max(steps // 2, 1)), "--eval-chars", "20000", "--device", device, "--quiet", "--out",
                    str(workdir / "runs" / f"{mb}-{attempt}")]
            seconds, peak_mb = _run_measured(args, env)
            row[f"{attempt}_start_seconds"] = round(seconds, 2)
            row[f"{attempt}_peak_rss_mb"] = round(peak_mb, 1)
        row["peak_rss_mb"] = max(row["first_peak_rss_mb"], row["second_peak_rss_mb"])
        # the token file is memory-mapped: a full epoch may bring all of it into resident memory
        row["token_file_mb"] = round(encoded.num_tokens * encoded.vocab.dtype.itemsize / 2**20, 1)
        rows.append(row)
        corpus.unlink()
    return rows
