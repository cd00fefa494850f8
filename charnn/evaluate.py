"""Stateful evaluation: loss, bits per character and perplexity over a whole text.

The text is scored as one sequence: every character after the first is
predicted from everything before it, with the hidden state carried across
windows and dropout off. For speed the text is cut into `num_streams`
contiguous pieces scored side by side; each piece after the first is warmed up
on the `burn_in` characters before it (not scored), so it starts with real
context instead of a zero state and the result matches a single-stream pass
to within noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .model import CharRNN, Hidden, reset_mask, select_streams

LN2 = math.log(2.0)


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


def _concat_hidden(first: Hidden, rest: Hidden) -> Hidden:
    if isinstance(first, torch.Tensor):
        return torch.cat([first, rest], dim=1)
    return tuple(torch.cat([a, b], dim=1) for a, b in zip(first, rest))


def _score(model: CharRNN, inputs: torch.Tensor, targets: torch.Tensor, hidden, window: int, resets=None):
    """Sum of losses over (T, S) inputs/targets, read `window` steps at a time; returns (sum, hidden)."""
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for start in range(0, inputs.shape[0], window):
        piece_resets = None if resets is None else resets[start : start + window]
        logits, hidden = model(inputs[start : start + window], hidden, piece_resets)
        target = targets[start : start + window]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), reduction="sum")
    return total, hidden


@torch.inference_mode()
def evaluate(
    model: CharRNN,
    tokens: torch.Tensor | np.ndarray,
    num_streams: int = 16,
    burn_in: int = 256,
    window: int = 256,
) -> EvalResult:
    """Score tokens[1:] given tokens[:-1]."""
    device = model.head.weight.device
    if isinstance(tokens, np.ndarray):
        from .data import as_tensor

        tokens = as_tensor(tokens, device)
    tokens = tokens.to(device)
    n_targets = len(tokens) - 1
    if n_targets < 1:
        return EvalResult(loss=math.nan, chars=0)
    was_training = model.training
    model.eval()
    try:
        # each piece at least 4x the burn-in, so warming up costs at most a quarter more work
        streams = max(1, min(num_streams, n_targets // (4 * max(burn_in, 1))))
        piece = n_targets // streams
        inputs = tokens[: streams * piece].view(streams, piece).t().long()  # (piece, S)
        targets = tokens[1 : streams * piece + 1].view(streams, piece).t().long()
        # with --reset-on, where the state restarts, over the whole text at once
        resets = reset_mask(tokens, model.config.reset_ids) if model.config.reset_ids else None
        warm = min(burn_in, piece)
        hidden = model.init_hidden(1 if warm else streams)
        if streams > 1 and warm:
            starts = torch.arange(1, streams, device=device) * piece
            warm_idx = (starts.unsqueeze(0) - warm + torch.arange(warm, device=device).unsqueeze(1)).long()
            warm_resets = None if resets is None else resets[warm_idx]
            _, warm_hidden = model(tokens[warm_idx].long(), None, warm_resets)  # state at each piece start
            hidden = _concat_hidden(hidden, warm_hidden)
        piece_resets = None if resets is None else resets[: streams * piece].view(streams, piece).t()
        total, hidden = _score(model, inputs, targets, hidden, window, piece_resets)
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
