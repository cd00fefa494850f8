#!/usr/bin/env python3
"""Vocabulary building and encoding speed on a large corpus (Tiny Shakespeare repeated to ~100 MB).

    python scripts/bench_encode.py            # ASCII text, and the same text with é and ö (2-byte UTF-8)
    python scripts/bench_encode.py --mb 500
"""

import argparse
import time
from pathlib import Path

from charnn import Vocab

CORPUS = Path(__file__).resolve().parent.parent / "corpora" / "tinyshakespeare.txt"


def measure(name: str, data: bytes) -> None:
    start = time.perf_counter()
    vocab = Vocab.from_data(data)
    built = time.perf_counter()
    ids, _ = vocab.encode_bytes(data)
    done = time.perf_counter()
    mb = len(data) / 1e6
    print(f"{name:>10} {mb:6.0f} MB  vocabulary {vocab.size:4d}  build {mb / (built - start):6.0f} MB/s  "
          f"encode {mb / (done - built):6.0f} MB/s  tokens {ids.dtype}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100, help="corpus size in MB (default 100)")
    args = parser.parse_args()
    base = CORPUS.read_bytes()
    accented = base.decode("utf-8").replace("e", "é").replace("o", "ö").encode("utf-8")
    for name, text in (("ASCII", base), ("non-ASCII", accented)):
        measure(name, text * max(1, round(args.mb * 1e6 / len(text))))


if __name__ == "__main__":
    main()
