"""Beam search: the most likely continuation the beams find, instead of a random one (`charnn sample --beam`).

It runs on `Streams`, one stream per beam, so it steps whatever steps the model (the numpy engine, or
PyTorch's stepper) and applies the repetition penalty of `charnn.generate.choice`, as sampling does.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from .choice import penalize
from .settings import SamplingConfig, check
from .streams import Steps, Streams, require_prime


def beam_search(model: Steps, prime: Sequence[int] | np.ndarray, length: int, beams: int = 8,
                repetition_penalty: float = 1.0, repetition_window: int | None = 64) -> Iterator[int]:
    """The most likely `length` characters after `prime` that a beam of `beams` finds, as ids.

    Every step keeps the `beams` likeliest continuations so far (summed log-probabilities, after the
    repetition penalty if one is given: the likeliest text is often a loop). Ids are yielded as soon
    as every beam agrees on them, so the output streams where the search has settled; the rest of the
    best beam follows at the end.
    """
    require_prime(prime)
    check("beam", beams)
    config = SamplingConfig(repetition_penalty=repetition_penalty, repetition_window=repetition_window)
    search = Streams.start(model, config, seed=0)  # nothing is drawn: the seed never matters
    search.feed(prime)
    with model.pool:
        model.pool.set(model.policy_for(beams).threads)
        yield from _search(search, length, beams)


def _search(search: Streams, length: int, beams: int) -> Iterator[int]:
    vocab_size = search.model.vocab_size
    scores = np.zeros(1)
    unsettled = np.zeros((1, 0), dtype=np.int64)  # (K, t): where the beams still differ
    for step in range(length):
        logits = search.logits
        if search.recent is not None:
            logits = penalize(logits, search.recent.seen(), search.options.penalty)
        candidates = (scores[:, None] + _log_softmax(logits)).ravel()  # (K * V,)
        top = _largest(candidates, min(beams, len(candidates)))
        parents, ids = top // vocab_size, top % vocab_size
        scores = candidates[top]
        unsettled = np.concatenate((unsettled[parents], ids[:, None]), axis=1)
        search.keep(parents)
        search.take(ids)
        agreed = int(np.cumprod((unsettled == unsettled[:1]).all(axis=0)).sum())
        yield from unsettled[0, :agreed].tolist()
        unsettled = unsettled[:, agreed:]
        if step + 1 < length:
            search.settle()
    yield from unsettled[int(scores.argmax())].tolist()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """The indices of the k largest values, largest first (ties: the lower index first)."""
    top = np.argpartition(-values, k - 1)[:k] if k < len(values) else np.arange(len(values))
    return top[np.lexsort((top, -values[top]))]
