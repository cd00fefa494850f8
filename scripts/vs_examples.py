"""`charnn train` with no options against a pytorch/examples-style loop, the same minutes on the same text.

    python scripts/vs_examples.py                                  # Tiny Shakespeare, 5 minutes each
    python scripts/vs_examples.py CORPUS --minutes 10 --rounds 2   # taking turns, the order swapped each round

The loop is word_language_model's, for characters (`charnn.bench.baselines.ReferenceModel`): a 2x256
nn.LSTM with 256-wide embeddings and dropout 0.2, 32 streams of 100 characters (batchify, get_batch,
repackage_hidden), gradient clipping at 0.25, with AdamW at 2e-3 decaying by a cosine over the minutes to
a tenth (the examples' SGD at lr 20 does far worse in minutes). It trains on the first 90% of the text,
as charnn does, and both are scored on the last 10%: charnn's best.pt with `charnn eval --json`, the loop
at its end the same way (16 streams, each warmed on the 256 characters before its piece). The budget is
wall-clock time, so run it on an otherwise idle machine; each round runs both, one after the other.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from charnn.bench.baselines import ReferenceModel  # noqa: E402
from charnn.data.batches import split_train_val  # noqa: E402
from charnn.data.vocab import Vocab  # noqa: E402

STREAMS, WINDOW, WIDTH, LAYERS, DROPOUT, LR, CLIP = 32, 100, 256, 2, 0.2, 2e-3, 0.25
EVAL_STREAMS, BURN_IN = 16, 256


def charnn_run(corpus: Path, minutes: float, out: Path, seed: int) -> dict:
    """`charnn train CORPUS --max-time M` (nothing else that changes training), scored by `charnn eval`."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "charnn"]
    subprocess.run([*command, "train", str(corpus), "--max-time", f"{minutes:g}m", "--seed", str(seed),
                    "--out", str(out), "--overwrite", "--quiet"], check=True, env=env, stdin=subprocess.DEVNULL)
    scored = subprocess.run([*command, "eval", str(out), "--json"], check=True, env=env, capture_output=True, text=True)
    config = json.loads((out / "config.json").read_text())
    return {"loss": json.loads(scored.stdout)["loss"], "shape": f"{config['model']['num_layers']}x"
            f"{config['model']['hidden_size']}", "steps": _last_step(out)}


def _last_step(run: Path) -> int:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r["step"] for r in records if "step" in r)


def examples_run(train: np.ndarray, val: np.ndarray, vocab_size: int, minutes: float, seed: int) -> dict:
    """The examples-style loop for `minutes` of wall-clock time, then its validation loss."""
    torch.manual_seed(seed)
    model = ReferenceModel(vocab_size, WIDTH, WIDTH, LAYERS, DROPOUT)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
    criterion = nn.CrossEntropyLoss()
    data = torch.from_numpy(train.astype(np.int64))
    data = data[: data.size(0) // STREAMS * STREAMS].view(STREAMS, -1).t().contiguous()  # batchify
    hidden = (torch.zeros(LAYERS, STREAMS, WIDTH), torch.zeros(LAYERS, STREAMS, WIDTH))
    budget, started, position, steps = minutes * 60.0, time.perf_counter(), 0, 0
    model.train()
    while (elapsed := time.perf_counter() - started) < budget:
        for group in optimizer.param_groups:  # cosine over the time budget, to a tenth
            group["lr"] = LR * (0.1 + 0.45 * (1 + math.cos(math.pi * elapsed / budget)))
        if position + 1 + WINDOW >= data.size(0):
            position = 0
        inputs, targets = data[position: position + WINDOW], data[position + 1: position + 1 + WINDOW]
        position += WINDOW
        hidden = tuple(h.detach() for h in hidden)  # repackage_hidden
        optimizer.zero_grad()
        output, hidden = model(inputs, hidden)
        loss = criterion(output.reshape(-1, vocab_size), targets.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        optimizer.step()
        steps += 1
    return {"loss": score(model, val), "shape": f"{LAYERS}x{WIDTH}", "steps": steps}


@torch.no_grad()
def score(model: ReferenceModel, val: np.ndarray) -> float:
    """Nats per character on val[1:] given what precedes it: 16 streams, each warmed on the BURN_IN
    characters before its piece (the first piece has none before it and starts cold), as charnn's eval."""
    model.eval()
    tokens = torch.from_numpy(val.astype(np.int64))
    targets = len(tokens) - 1
    piece = math.ceil(targets / EVAL_STREAMS)
    total, counted = 0.0, 0
    for start in range(0, targets, piece):
        begin = max(0, start - BURN_IN)
        inputs = tokens[begin: min(start + piece, targets)].unsqueeze(1)
        wanted = tokens[begin + 1: min(start + piece, targets) + 1]
        output, _ = model(inputs, None)
        losses = nn.functional.cross_entropy(output.squeeze(1), wanted, reduction="none")[start - begin:]
        total, counted = total + losses.sum().item(), counted + len(losses)
    return total / counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corpus", nargs="?", default=str(REPO / "corpora" / "tinyshakespeare.txt"))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--out", default=str(REPO / "runs" / "vs-examples"))
    args = parser.parse_args()
    corpus = Path(args.corpus)
    vocab = Vocab.from_data(corpus.read_bytes())
    train, val = split_train_val(vocab.encode_bytes(corpus.read_bytes())[0], 0.1)
    results: dict[str, list[dict]] = {"charnn": [], "examples": []}
    for round_ in range(args.rounds):
        order = ("charnn", "examples") if round_ % 2 == 0 else ("examples", "charnn")
        for who in order:
            print(f"round {round_ + 1}: {who} for {args.minutes:g} minutes", file=sys.stderr, flush=True)
            if who == "charnn":
                result = charnn_run(corpus, args.minutes, Path(args.out) / f"charnn-{round_ + 1}", args.seed)
            else:
                result = examples_run(train, val, vocab.size, args.minutes, args.seed)
            results[who].append(result)
            print(f"  {who}: {result['shape']}, {result['steps']:,} steps, {result['loss']:.4f} nats/char",
                  file=sys.stderr, flush=True)
    ours, theirs = (statistics.median(r["loss"] for r in results[w]) for w in ("charnn", "examples"))
    print(json.dumps({"corpus": str(corpus), "minutes": args.minutes, "rounds": args.rounds, "charnn": results["charnn"],
                      "examples": results["examples"], "charnn_median": round(ours, 4),
                      "examples_median": round(theirs, 4), "lead": round(theirs - ours, 4)}, indent=1))


if __name__ == "__main__":
    main()
