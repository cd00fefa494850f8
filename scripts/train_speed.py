"""Training steps a second of this checkout's Trainer against another checkout's, taking turns in one process.

    CHARNN_THREADS=2 python scripts/train_speed.py --before DIR [--shapes 2x256 2x512] [--rounds 12] [--steps 20]

DIR is a charnn checkout (the directory holding charnn/), e.g. the code before a change:
`git worktree add /tmp/before 47bf380`. Both sides build a Trainer of the same shape on the same synthetic
tokens (dropout 0.1, AdamW, clipping, the schedule: the defaults), seeded alike, and take turns of
`--steps` training windows (the trainer's own `_train_window`: the learning rate, the batch, the step, the
thread policy, the bookkeeping; logging, evaluation and saving are left out); rates are medians over the
turns after the first, so both sides see the same machine. Each side draws its dropout masks from random
numbers of its own, and their weights are compared after the turns: equal weights say that the figures
compare the same arithmetic. Fix the thread count (CHARNN_THREADS, or OMP_NUM_THREADS): one side's thread
policy probing other counts would move the other's timings too (the count is the process's).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from steppers import load_before  # the other checkout, loaded as steppers.py does

import charnn

VOCAB = 65  # Tiny Shakespeare's


def trainer_of(package, shape: str, tokens: np.ndarray, run_dir: Path, batch: int, seq_len: int):
    """A Trainer of `package` (this charnn or the one before), ready to take windows."""
    layers, hidden = (int(n) for n in shape.split("x"))
    model = package.ModelConfig(vocab_size=VOCAB, num_layers=layers, hidden_size=hidden, dropout=0.1)
    config = package.TrainConfig(batch_size=batch, seq_len=seq_len, max_steps=10**9, eval_every=10**9,
                                 save_every_seconds=None, device="cpu", precision="fp32", seed=0)
    vocab = package.Vocab(mode="char", chars="".join(chr(33 + i) for i in range(VOCAB)))
    trainer = package.Trainer(model, config, package.TrainData(vocab, tokens, tokens[: seq_len * 4]), run_dir)
    trainer.model.train()
    return trainer


def windows(trainer, count: int) -> float:
    """Seconds for `count` training windows (a new epoch begun where one ends)."""
    started = time.perf_counter()
    for _ in range(count):
        if trainer.state.window >= len(trainer._batches):
            trainer._next_epoch()
        trainer._train_window()
    return time.perf_counter() - started


def compare(before, shape: str, rounds: int, steps: int, batch: int, seq_len: int) -> dict[str, float]:
    tokens = np.random.default_rng(0).integers(0, VOCAB, 2_000_000, dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="charnn-train-speed-") as tmp:
        sides, rng = {}, {}  # each side draws its dropout masks from random numbers of its own
        for name, package in (("after", charnn), ("before", before)):
            sides[name] = trainer_of(package, shape, tokens, Path(tmp) / name, batch, seq_len)
            rng[name] = torch.get_rng_state()
        times: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds):
            for name, trainer in sides.items():
                torch.set_rng_state(rng[name])
                times[name].append(windows(trainer, steps))
                rng[name] = torch.get_rng_state()
        same = all(torch.equal(a, b) for a, b in zip(sides["after"].model.state_dict().values(),
                                                     sides["before"].model.state_dict().values()))
    rates = {name: steps / statistics.median(t[1:]) for name, t in times.items()}
    return {**rates, "same_weights": same}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="a charnn checkout to compare with")
    parser.add_argument("--shapes", nargs="+", default=["2x256", "2x512"], help="LAYERSxHIDDEN (default 2x256 2x512)")
    parser.add_argument("--rounds", type=int, default=12, help="turns of each side (the first is a warm-up)")
    parser.add_argument("--steps", type=int, default=20, help="training windows per turn")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    if not (args.before / "charnn" / "__init__.py").is_file():
        parser.error(f"--before {args.before}: no charnn/__init__.py there")
    before = load_before(args.before)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; training steps a second, median of "
          f"{args.rounds - 1} turns of {args.steps} ({args.batch_size} streams x {args.seq_len})")
    print(f"{'shape':>7} {'after':>9} {'before':>9} {'after/before':>13} {'same weights':>13}")
    for shape in args.shapes:
        rate = compare(before, shape, args.rounds, args.steps, args.batch_size, args.seq_len)
        print(f"{shape:>7} {rate['after']:>9.2f} {rate['before']:>9.2f} {rate['after'] / rate['before']:>12.3f}x "
              f"{rate['same_weights']!s:>13}", flush=True)


if __name__ == "__main__":
    main()
