"""Build the English base model charnn ships (charnn/model/english.safetensors), bit for bit.

    python scripts/base_model.py             # train (about 40 minutes on one core), then write it
    python scripts/base_model.py --check     # how the stored float16 weights sample against the trained ones

What it is: the fixed default shape (a 2x256 LSTM), trained from seed 1337 on the three public-domain
corpora in corpora/ (Tiny Shakespeare, Nietzsche's Beyond Good and Evil, War and Peace: 4.9 MB of English
drama and prose, their sources in corpora/README.md), for STEPS optimiser steps of 8 streams x 128
characters in float32 on one thread: a fixed count of steps, of threads and of everything else, so the
same machine rebuilds the same weights (a CPU with other vector units rounds differently). The last 10%
of the text (the end of War and Peace) is held out; the best weights by it are stored, in float16 (half
the size; the --check figures are in the README).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charnn.model.weights import Weights, read_weights, write_weights  # noqa: E402

CORPORA = [REPO / "corpora" / f"{name}.txt" for name in ("tinyshakespeare", "nietzsche", "warandpeace")]
RUN = REPO / "runs" / "base" / "english"
TARGET = REPO / "charnn" / "model" / "english.safetensors"
STEPS = 30_000
OPTIONS = ["--layers", "2", "--hidden-size", "256", "--embed-size", "256", "--dropout", "0.2", "--batch-size", "8",
           "--seq-len", "128", "--lr", "2e-3", "--max-steps", str(STEPS), "--eval-every", "2000",
           "--eval-chars", "0", "--seed", "1337", "--precision", "fp32", "--threads", "1", "--device", "cpu"]


def train() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHARNN_RUNS_DIR": str(RUN.parent)}
    # a resume keeps the run's options but not its thread count, a choice of each process: pinned again
    fresh = [*map(str, CORPORA), *OPTIONS, "--out", str(RUN), "--overwrite"]
    command = ["--resume", str(RUN), "--threads", "1"] if (RUN / "last.pt").is_file() else fresh
    RUN.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "charnn", "train", *command], env=env, check=True, cwd=RUN.parent)


def half(weights: Weights) -> Weights:
    """The same weights stored in float16 (read back as float32 by every reader)."""
    return Weights(weights.config, weights.vocab, {k: v.astype(np.float16) for k, v in weights.arrays.items()},
                   weights.records)


def write() -> None:
    trained = read_weights(RUN / "best.safetensors")
    records = {**trained.records, "corpus": {"sources": [p.name for p in CORPORA],
                                             **{k: v for k, v in (trained.records.get("corpus") or {}).items()
                                                if k != "sources"}}}
    write_weights(TARGET, half(Weights(trained.config, trained.vocab, trained.arrays, records)))
    print(f"{TARGET.relative_to(REPO)}: {TARGET.stat().st_size / 1e6:.1f} MB, step {trained.step}, "
          f"validation loss {trained.records.get('val_loss'):.4f} nats/char")


def check(chars: int = 20_000) -> None:
    """The stored weights against the trained ones: the largest change of a logit over held-out text, and
    how often a sampled character differs (same seed, sampled with each)."""
    from charnn.model.engine import Engine  # noqa: PLC0415
    from charnn.generate.streams import Streams  # noqa: PLC0415

    trained, stored = read_weights(RUN / "best.safetensors"), read_weights(TARGET)
    text = CORPORA[-1].read_bytes()[-chars:]
    ids = trained.vocab.encode(text.decode("utf-8", "replace"), unknown="drop")
    engines = [Engine(w.config, w.arrays) for w in (trained, stored)]
    states = [engine.zero_state(1) for engine in engines]
    worst = 0.0
    for token in ids[:2000]:
        outputs = [engine.step(np.array([token]), state) for engine, state in zip(engines, states)]
        states = [state for _, state in outputs]
        worst = max(worst, float(np.abs(outputs[0][0] - outputs[1][0]).max()))
    samples = []
    for engine in engines:
        streams = Streams.start(engine, num_samples=1, seed=1)
        streams.feed(trained.vocab.encode("\n"))
        samples.append(np.concatenate(list(streams.sample(chars))))
    same = int((samples[0] == samples[1]).sum())
    first = int(np.argmin(samples[0] == samples[1])) if same < chars else chars
    print(json.dumps({"max_logit_change": round(worst, 5), "sampled_alike": same, "of": chars,
                      "first_difference_at": first}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare the stored weights with the trained ones")
    args = parser.parse_args()
    if args.check:
        check()
        return
    train()
    write()
    check()


if __name__ == "__main__":
    main()
