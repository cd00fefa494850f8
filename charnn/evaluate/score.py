"""Stateful evaluation: loss, bits per character and perplexity over a whole text.

The text is scored as one sequence: every character after the first is
predicted from everything before it, with the hidden state carried across
windows and dropout off. For speed the text is cut into `num_streams`
contiguous pieces scored side by side; each piece after the first is warmed up
on the `burn_in` characters before it (not scored), so it starts with real
context instead of a zero state and the result matches a single-stream pass
to within noise.

A text too long to score whole at every evaluation is sampled the same way:
the pieces are shorter and spread evenly over all of it. Its first characters
alone would not do: a big corpus is not alike along its length, and a model
that has just read text like them would look better than it is.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.batches import reset_mask
from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.network import CharRNN, Hidden, join_streams, select_streams
from ..runtime.threads import ThreadPolicy, TimedUnit
from ..units import LN2


@dataclass(frozen=True)
class EvalResult:
    loss: float  # mean cross-entropy in nats per scored character
    chars: int  # characters scored

    @property
    def bpc(self) -> float:
        return self.loss / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf


def split_into_pieces(n: int, num_streams: int, burn_in: int) -> tuple[int, int]:
    """n characters read as contiguous pieces side by side: (how many, how long). Each piece is at
    least 4x the burn-in, so warming the pieces up costs at most a quarter more work."""
    streams = max(1, min(num_streams, n // (4 * max(burn_in, 1))))
    return streams, n // streams


def warm_start(model: CharRNN, streams: int, piece: int, burn_in: int,
               read: Callable[[torch.Tensor], Hidden], stride: int | None = None) -> Hidden:
    """The state each piece starts from: zero for the first; for every other, the state after the
    `burn_in` characters before it, which `read(positions)` computes (positions: (burn_in, streams - 1)
    indices into the text). Piece i starts at i * stride (the pieces are contiguous by default)."""
    device = model.head.weight.device
    warm = min(burn_in, piece)
    hidden = model.init_hidden(1 if warm else streams, device)
    if streams > 1 and warm:
        starts = torch.arange(1, streams, device=device) * (stride or piece)
        positions = (starts.unsqueeze(0) - warm + torch.arange(warm, device=device).unsqueeze(1)).long()
        hidden = join_streams(hidden, read(positions))
    return hidden


def _score(model: CharRNN, inputs: torch.Tensor, targets: torch.Tensor, hidden, window: int, resets=None,
           threads: ThreadPolicy | None = None):
    """Sum of losses over (T, S) inputs/targets, read `window` steps at a time; returns (sum, hidden).
    Each window is a unit of work for the thread policy."""
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for start in range(0, inputs.shape[0], window):
        piece_resets = None if resets is None else resets[start : start + window]
        target = targets[start : start + window]
        with _unit(threads, target.numel()):
            logits, hidden = model(inputs[start : start + window], hidden, piece_resets)
            total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                                     reduction="sum")
    return total, hidden


def _unit(threads: ThreadPolicy | None, work: int):
    return nullcontext() if threads is None else TimedUnit(threads, work)


@torch.inference_mode()
def evaluate(
    model: CharRNN,
    tokens: torch.Tensor | np.ndarray,
    num_streams: int = 16,
    burn_in: int = 256,
    window: int = 256,
    threads: ThreadPolicy | None = None,
    sample: int | None = None,
) -> EvalResult:
    """Score tokens[1:] given tokens[:-1]; `threads` chooses the thread count (None: as it is). With
    `sample` below the text's length, about that many characters are scored, in pieces spread over it."""
    device = model.head.weight.device
    if isinstance(tokens, np.ndarray):
        from ..data.batches import as_tensor

        tokens = as_tensor(tokens, device)
    tokens = tokens.to(device)
    n_targets = len(tokens) - 1
    if n_targets < 1:
        return EvalResult(loss=math.nan, chars=0)
    was_training = model.training
    model.eval()
    try:
        spread = sample is not None and sample < n_targets
        streams, piece = split_into_pieces(sample if spread else n_targets, num_streams, burn_in)
        stride = n_targets // streams if spread else piece

        def pieces(t: torch.Tensor) -> torch.Tensor:  # (piece, S): piece i is t[i * stride :][:piece]
            return t.unfold(0, piece, stride)[:streams].t()

        inputs, targets = pieces(tokens[:-1]).long(), pieces(tokens[1:]).long()
        # with --reset-on, where the state restarts, over the whole text at once
        resets = reset_mask(tokens, model.config.reset_ids) if model.config.reset_ids else None
        if threads is not None:
            threads.start()  # the warm-up runs at the count the policy holds (it is not timed)
        hidden = warm_start(model, streams, piece, burn_in, lambda at: model(
            tokens[at].long(), None, None if resets is None else resets[at])[1], stride)
        total, hidden = _score(model, inputs, targets, hidden, window,
                               None if resets is None else pieces(resets[:n_targets]), threads)
        if spread:
            return EvalResult(loss=float(total) / (streams * piece), chars=streams * piece)
        rest = n_targets - streams * piece
        if rest:  # the few characters past the last full piece continue the last stream
            start = streams * piece
            more, _ = _score(
                model,
                tokens[start : start + rest].view(rest, 1).long(),
                tokens[start + 1 : start + rest + 1].view(rest, 1).long(),
                select_streams(hidden, slice(streams - 1, streams)),
                window,
                None if resets is None else resets[start : start + rest].view(rest, 1),
            )
            total += more
        return EvalResult(loss=float(total) / n_targets, chars=n_targets)
    finally:
        model.train(was_training)


@dataclass(frozen=True)
class EvalText:
    """The text `charnn eval` scores: files the user named, or the run's own validation text."""

    tokens: np.ndarray
    unknown: int  # characters the model never saw, left out (neither fed nor scored)
    sources: list[str]
    kind: str  # "files" or "validation"


def text_to_score(paths: Sequence[str], vocab: Vocab, checkpoint: Path, payload: dict) -> EvalText:
    """The files in `paths` encoded with the model's vocabulary, or with no paths, the validation text of
    the run the checkpoint belongs to."""
    from ..data.corpus import read_corpus  # noqa: PLC0415
    from ..runs.rundir import RunDir  # noqa: PLC0415

    if paths:
        corpus = read_corpus(paths)
        tokens, unknown = vocab.encode_bytes(corpus.data, describe_offset=corpus.describe_offset)
        text = EvalText(tokens, unknown, list(corpus.sources), "files")
    else:
        run = RunDir(checkpoint.parent)
        train_config = payload.get("train_config")  # a file may hold anything here
        tokens = run.validation_tokens(train_config.get("val_frac") if isinstance(train_config, dict) else None)
        if tokens is None:
            raise CharnnError(f"{checkpoint}: no text given and no run validation text beside the checkpoint",
                              hint="name a file to evaluate")
        text = EvalText(tokens, 0, [f"{run.path} (validation split)"], "validation")
    if len(text.tokens) < 2:
        raise CharnnError("nothing to score: the text has fewer than 2 characters the model knows")
    return text
