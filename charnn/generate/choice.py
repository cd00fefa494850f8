"""Choosing each stream's next character in numpy: repetition penalty, temperature, top-k, top-p,
min-p (transformers' names, applied in its order), then a draw, or the argmax at temperature 0.

Every option is per stream, an array over the batch, and every stream draws from a random number
generator of its own, so streams with different options and seeds can share one step (`charnn
sample --num-samples`; requests joining and leaving one batch in `charnn serve`). They work on numpy
logits of whatever steps the model (`charnn.generate.streams`): the only filters and draw charnn has.
"""

from __future__ import annotations

from functools import cached_property
from typing import Sequence

import numpy as np

from .settings import SamplingConfig

_COLUMNS = ("temperature", "top_k", "top_p", "min_p", "penalty", "window")


def stream_rng(seed: int, stream: int) -> np.random.Generator:
    """Stream `stream`'s generator for a seed: sample 0 of `--num-samples N --seed S` is the text
    `--seed S` gives alone, and each stream's numbers are independent of the others'."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


class StreamOptions:
    """Each stream's sampling options as arrays over the batch. An option a stream does not use holds
    the value that changes nothing: top_k 0, top_p 1, min_p 0, penalty 1."""

    def __init__(self, temperature, top_k, top_p, min_p, penalty, window):
        self.temperature = np.asarray(temperature, dtype=np.float32)  # 0: greedy
        self.top_k = np.asarray(top_k, dtype=np.int64)
        self.top_p = np.asarray(top_p, dtype=np.float32)
        self.min_p = np.asarray(min_p, dtype=np.float32)
        self.penalty = np.asarray(penalty, dtype=np.float32)
        self.window = np.asarray(window, dtype=np.int64)  # recent characters the penalty counts; 0: all

    # Derived on first use, then only read by every step. Not at construction: a server builds options for
    # each request, its join and its leaving (45 us each, eleven reductions), and most are never stepped.

    @cached_property
    def greedy(self) -> np.ndarray:
        return self.temperature <= 0

    @cached_property
    def all_greedy(self) -> bool:
        return bool(self.greedy.all())

    @cached_property
    def any_greedy(self) -> bool:
        return bool(self.greedy.any())

    @cached_property
    def unit_temperature(self) -> bool:
        return bool((self.temperature == 1).all())

    @cached_property
    def inverse_temperature(self) -> np.ndarray:
        """(B, 1): 1 / temperature, and 1 for the greedy."""
        return (1 / np.where(self.greedy, 1, self.temperature)).astype(np.float32)[:, None]

    @cached_property
    def penalized(self) -> bool:
        return bool((self.penalty != 1).any())

    @cached_property
    def filtered(self) -> bool:
        return bool((self.top_k > 0).any() or (self.top_p < 1).any() or (self.min_p > 0).any())

    @classmethod
    def of(cls, configs: Sequence[SamplingConfig]) -> StreamOptions:
        """The options of streams with these (validated) configs, one each."""
        return cls(temperature=[c.temperature for c in configs], top_k=[c.top_k or 0 for c in configs],
                   top_p=[1.0 if c.top_p is None else c.top_p for c in configs],
                   min_p=[c.min_p or 0.0 for c in configs], penalty=[c.repetition_penalty for c in configs],
                   window=[c.repetition_window or 0 for c in configs])

    def __len__(self) -> int:
        return len(self.temperature)

    def select(self, rows: np.ndarray) -> StreamOptions:
        return StreamOptions(*(getattr(self, name)[rows] for name in _COLUMNS))

    def join(self, other: StreamOptions) -> StreamOptions:
        return StreamOptions(*(np.concatenate((getattr(self, name), getattr(other, name))) for name in _COLUMNS))


# --- the filters, on (B, V) logits; removed entries become -inf ----------------------------------


def penalize(logits: np.ndarray, seen: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """transformers' (CTRL's) repetition penalty: a seen character's logit is divided by the stream's
    penalty when positive and multiplied by it when negative, so it always becomes less likely."""
    penalty = penalty[:, None]
    return np.where(seen, np.where(logits > 0, logits / penalty, logits * penalty), logits)


def top_k(logits: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Keep each row's k largest (ties with the k-th kept too); k 0 keeps everything."""
    V = logits.shape[1]
    k = np.where((k > 0) & (k < V), k, V)
    kth = np.take_along_axis(np.sort(logits, axis=1), (V - k)[:, None], axis=1)
    return np.where(logits < kth, -np.inf, logits)


def top_p(logits: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Keep the smallest set of each row's likeliest characters whose probability reaches p: a
    character goes when the ones more likely than it already reach p."""
    order = np.argsort(-logits, axis=1, kind="stable")
    ordered = np.take_along_axis(logits, order, axis=1)
    probs = softmax(ordered)
    drop_ordered = np.cumsum(probs, axis=1) - probs >= np.where(p < 1, p, np.inf)[:, None]
    drop = np.empty_like(drop_ordered)
    np.put_along_axis(drop, order, drop_ordered, axis=1)
    return np.where(drop, -np.inf, logits)


def min_p(logits: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Keep the characters at least p times as likely as the likeliest: logit >= max + log(p)."""
    with np.errstate(divide="ignore"):  # log(0) = -inf keeps everything
        floor = logits.max(axis=1, keepdims=True) + np.log(p)[:, None]
    return np.where(logits < floor, -np.inf, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= weights.sum(axis=1, keepdims=True)
    return weights


def filter_logits(logits: np.ndarray, options: StreamOptions) -> np.ndarray:
    """Top-k, top-p and min-p, each where some stream uses it (on logits already divided by the temperature)."""
    if (options.top_k > 0).any():
        logits = top_k(logits, options.top_k)
    if (options.top_p < 1).any():
        logits = top_p(logits, options.top_p)
    if (options.min_p > 0).any():
        logits = min_p(logits, options.min_p)
    return logits


def draw(logits: np.ndarray, rngs: Sequence[np.random.Generator], scale: np.ndarray | None = None) -> np.ndarray:
    """One draw per row, row b with rngs[b], from softmax(logits * scale) (scale (B, 1): 1/temperature):
    the argmax of p / E with E ~ Exp(1). Row i wins with probability p_i (the smallest of exponentials
    with rates p_i), and a zero probability never wins. exp((logit - max) * scale) is proportional to
    the probability, which is all the argmax needs; the noise is float64, so it is never exactly zero."""
    weights = logits - logits.max(axis=1, keepdims=True)
    if scale is not None:
        weights *= scale
    np.exp(weights, out=weights)
    if len(rngs) == 1:  # the usual `charnn sample`: one call, no loop
        weights /= rngs[0].standard_exponential(weights.shape)
    else:
        noise = np.empty(weights.shape)
        for row, rng in zip(noise, rngs):
            rng.standard_exponential(out=row)
        weights /= noise
    return weights.argmax(axis=1)


def choose(logits: np.ndarray, options: StreamOptions, rngs: Sequence[np.random.Generator],
           seen: np.ndarray | None = None) -> np.ndarray:
    """Each stream's next id (B,) from its logits (B, V), as its options say. `seen` (B, V): which
    characters each stream produced lately, for the repetition penalty."""
    if options.penalized and seen is not None:
        logits = penalize(logits, seen, options.penalty)
    if options.all_greedy:
        return logits.argmax(axis=1)
    scale = None if options.unit_temperature else options.inverse_temperature
    if options.filtered:  # top-p and min-p depend on the temperature: filter the scaled logits
        ids = draw(filter_logits(logits if scale is None else logits * scale, options), rngs)
    else:
        ids = draw(logits, rngs, scale)
    return np.where(options.greedy, logits.argmax(axis=1), ids) if options.any_greedy else ids


class RecentWindow:
    """Which characters each stream produced (or was primed with) lately, for the repetition penalty:
    counts over each stream's last `window` characters (0: all of them), kept in a ring per stream."""

    def __init__(self, windows: np.ndarray, vocab_size: int):
        self.window = np.asarray(windows, dtype=np.int64)
        streams = len(self.window)
        self.counts = np.zeros((streams, vocab_size), dtype=np.int32)
        self.ring = np.full((streams, max(int(self.window.max(initial=0)), 1)), -1, dtype=np.int64)
        self.position = np.zeros(streams, dtype=np.int64)

    def seen(self) -> np.ndarray:
        return self.counts > 0

    def add(self, steps: np.ndarray) -> None:
        """ids (B,) or (T, B), oldest first."""
        steps = np.asarray(steps, dtype=np.int64).reshape(-1, len(self.window))
        span = self.ring.shape[1]
        unlimited = np.flatnonzero(self.window == 0)
        if len(steps) > span and len(unlimited):  # what leaves every window at once still counts for these
            early = steps[:-span, unlimited]
            np.add.at(self.counts, (np.broadcast_to(unlimited, early.shape), early), 1)
        for ids in steps[-span:]:  # a windowed stream sees at most its window; older ids would leave it again
            self._add_one(ids)

    def _add_one(self, ids: np.ndarray) -> None:
        rows = np.arange(len(ids))
        slot = self.position % np.maximum(self.window, 1)
        full = (self.window > 0) & (self.position >= self.window)
        self.counts[rows[full], self.ring[rows[full], slot[full]]] -= 1
        self.ring[rows, slot] = ids
        self.counts[rows, ids] += 1
        self.position += 1

    def select(self, rows: np.ndarray) -> RecentWindow:
        """The history of these streams (beam search: each new beam inherits its parent's)."""
        picked = RecentWindow(self.window[rows], self.counts.shape[1])
        picked.counts, picked.ring, picked.position = self.counts[rows], self.ring[rows], self.position[rows]
        return picked

    def join(self, other: RecentWindow) -> RecentWindow:
        joined = RecentWindow(np.concatenate((self.window, other.window)), self.counts.shape[1])
        width = joined.ring.shape[1]
        pad = lambda ring: np.pad(ring, ((0, 0), (0, width - ring.shape[1])), constant_values=-1)  # noqa: E731
        joined.counts = np.concatenate((self.counts, other.counts))
        joined.ring = np.concatenate((pad(self.ring), pad(other.ring)))
        joined.position = np.concatenate((self.position, other.position))
        return joined
