"""A checkpoint's validation loss three ways: the first N characters of its run's validation text, N
characters in 16 pieces spread over it (what `charnn train --eval-chars N` scores), and all of it.

    CHARNN_RUNS_DIR=runs/sizing/runs python scripts/eval_spread.py runs/sizing/runs/RUN/best.pt ...
    python scripts/eval_spread.py --chars 100000 --no-whole RUN/best.pt RUN/last.pt

Where the first figure ranks checkpoints otherwise than the last, a run's best.pt chosen on the first
characters would be the wrong one: the README's sizing study shows it on a source tree. One JSON line a
checkpoint, on one thread (the figures do not depend on it).
"""

from __future__ import annotations

import argparse
import json

import torch

from charnn.evaluate.score import evaluate, text_to_score
from charnn.runs.locate import open_model


def scores(checkpoint: str, chars: int, whole: bool) -> dict:
    loaded = open_model(checkpoint, "cpu")
    tokens = text_to_score([], loaded.vocab, loaded.path, loaded.payload).tokens
    out = {"checkpoint": checkpoint, "val_chars": len(tokens) - 1,
           "first": round(evaluate(loaded.model, tokens[: chars + 1]).loss, 4),
           "spread": round(evaluate(loaded.model, tokens, sample=chars).loss, 4)}
    if whole:
        out["whole"] = round(evaluate(loaded.model, tokens).loss, 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="best.pt or last.pt of runs whose validation text is beside them")
    parser.add_argument("--chars", type=int, default=100_000, help="characters scored first and spread")
    parser.add_argument("--no-whole", action="store_true", help="skip the whole validation text (slow on a big one)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for checkpoint in args.checkpoints:
        print(json.dumps(scores(checkpoint, args.chars, not args.no_whole)), flush=True)


if __name__ == "__main__":
    main()
