"""Sampling on the CPU, without PyTorch: streams of text drawn side by side from an `Engine`.

`Streams` is a batch: the recurrent state of every stream (columns of the engine's arrays), the logits
of what each reads next, its sampling options, its random number generator, its repetition history
and the characters that might begin a record delimiter. Text is fed to every stream at once; each
step draws one character per stream and reads it back in. Streams can be dropped or reordered
(`keep`) and batches joined (`join`) between steps, so streams started apart can share the steps
that follow. `charnn sample` (one stream, `--num-samples`, `--interactive`, `--beam`) runs here.
"""

from __future__ import annotations

import os
from time import perf_counter
from typing import Iterator, Sequence

import numpy as np

from .choice import RecentWindow, StreamOptions, choose, penalize, stream_rng
from ..config import SamplingConfig
from ..model.engine import Engine, join_streams, repeat_streams, select_streams, zero_streams
from ..errors import CharnnError
from ..data.vocab import Vocab


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


def default_prime(vocab: Vocab, reset_ids: Sequence[int] = ()) -> list[int]:
    """Without a prime, start where texts usually do: after a newline (else the first character), or
    for a model trained with --reset-on, after its delimiter, where every record starts."""
    if reset_ids:
        return list(reset_ids)
    if vocab.mode == "byte":
        return [ord("\n")]
    index = vocab.chars.find("\n")
    return [index if index >= 0 else 0]


def require_prime(prime) -> None:
    if len(prime) == 0:
        raise CharnnError("the prime is empty", hint="give at least one character, or none to use the default")


class Streams:
    """Streams sampled side by side from one engine, each with its own options and random numbers.

    The state carries over between calls, so a conversation-like loop (`charnn sample --interactive`)
    can alternate `feed` and `sample`; `reset` forgets everything. With a model trained with
    --reset-on, a stream's state restarts at the delimiter, exactly as in training.
    """

    def __init__(self, engine: Engine, options: StreamOptions, rngs: Sequence[np.random.Generator]):
        if len(options) != len(rngs) or len(options) < 1:
            raise CharnnError(f"need one generator per stream and at least one stream, not {len(rngs)}")
        self.engine, self.options, self.rngs = engine, options, list(rngs)
        self.reset_ids = tuple(engine.config.reset_ids)
        self.reset()

    @classmethod
    def start(cls, engine: Engine, config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
              seed: int | None = None) -> Streams:
        """`num_samples` streams alike: the same options, generators from one seed (None: a fresh one)."""
        if num_samples < 1:
            raise CharnnError(f"--num-samples must be at least 1, not {num_samples}")
        config = config.validate(engine.vocab_size)
        seed = fresh_seed() if seed is None else seed
        return cls(engine, StreamOptions.of([config] * num_samples), [stream_rng(seed, i) for i in range(num_samples)])

    def __len__(self) -> int:
        return len(self.rngs)

    def reset(self) -> None:
        """Back to the zero state with nothing read."""
        streams = len(self)
        self.state: list | None = None  # None: the zero state
        self.logits: np.ndarray | None = None  # (B, V): what comes next, given everything read (raw logits)
        self.pending: np.ndarray | None = None  # (B,): drawn and handed out, not yet read
        # the last len(delimiter) - 1 characters read, (n, B): a delimiter may straddle two reads
        self.tail = np.full((max(len(self.reset_ids) - 1, 0), streams), -1, dtype=np.int64)
        self.recent = RecentWindow(self.options.window, self.engine.vocab_size) if self.options.penalized else None

    # --- reading -----------------------------------------------------------------------------

    def feed(self, ids: Sequence[int] | np.ndarray) -> None:
        """Read text (the same for every stream) after whatever each stream read or drew before."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) == 0:
            return
        streams = len(self)
        if self.state is None and self.pending is None:  # every stream is alike: read once, then copy
            self.tail, state = self.tail[:, :1], self.engine.zero_state(1)
            logits, state = self.engine.read(ids[:, None], state, self._delimiters(ids[:, None]))
            self.logits, self.state = np.repeat(logits, streams, axis=0), repeat_streams(state, streams)
            self.tail = np.repeat(self.tail, streams, axis=1)
        else:
            steps, state = self._steps(ids)
            self.logits, self.state = self.engine.read(steps, state, self._delimiters(steps))
        self._remember(ids)

    def _steps(self, ids: np.ndarray) -> tuple[np.ndarray, list]:
        """What the streams read for `ids` (T, B), after the ids drawn last if they are not read yet, and
        the state they start from."""
        steps = np.broadcast_to(ids[:, None], (len(ids), len(self)))
        if self.pending is not None:
            steps = np.concatenate((self.pending[None], steps))
            self.pending = None
        return steps, self.state if self.state is not None else self.engine.zero_state(len(self))

    def _remember(self, ids: np.ndarray) -> None:
        if self.recent is not None:
            self.recent.add(np.broadcast_to(ids[:, None], (len(ids), len(self))))

    def _delimiters(self, steps: np.ndarray) -> np.ndarray | None:
        """Where each stream (column of `steps`, (T, B)) completes the record delimiter; keeps the tail."""
        if not self.reset_ids:
            return None
        context = len(self.tail)
        full = np.concatenate((self.tail, steps))
        ends = np.ones(steps.shape, dtype=bool)
        for back, char in enumerate(reversed(self.reset_ids)):
            ends &= full[context - back : context - back + len(steps)] == char
        self.tail = full[len(full) - context :]
        return ends

    def settle(self) -> None:
        """Read the ids drawn last, so every stream's logits follow everything it produced."""
        if self.pending is None:
            return
        ids, self.pending = self.pending, None
        state = self.state
        if self.reset_ids:  # a stream that completes the delimiter reads its last character from zero
            state = zero_streams(state, self._delimiters(ids[None])[0])
        self.logits, self.state = self.engine.step(ids, state)

    # --- drawing -----------------------------------------------------------------------------

    def sample(self, length: int) -> Iterator[np.ndarray]:
        """Yield `length` steps of (B,) int64 ids, each drawn and then read back in (numpy's BLAS held to
        the engine's threads for this many streams meanwhile)."""
        with self.engine.pool:
            policy = self.engine.policy_for(len(self))
            for _ in range(length):
                policy.start()
                started = perf_counter()
                ids = self.advance()
                policy.finish(perf_counter() - started, len(ids))
                yield ids

    def advance(self) -> np.ndarray:
        """Read the ids drawn last, draw the next ones (B,) and hand them out."""
        if self.logits is None:
            raise CharnnError("nothing to continue from: feed a prime first")
        self.settle()
        ids = choose(self.logits, self.options, self.rngs, None if self.recent is None else self.recent.seen())
        self.take(ids)
        return ids

    def take(self, ids: np.ndarray) -> None:
        """Make `ids` (B,) the streams' next characters, as if drawn: remembered, and read on the next step."""
        if self.recent is not None:
            self.recent.add(ids)
        self.pending = ids

    # --- streams joining and leaving -----------------------------------------------------------

    def keep(self, rows: np.ndarray) -> None:
        """Keep these streams, in this order (a row may repeat: beam search copies its best beams)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.options, self.rngs = self.options.select(rows), [self.rngs[r] for r in rows]
        if self.state is not None:
            self.state = select_streams(self.state, rows)
        if self.logits is not None:
            self.logits = self.logits[rows]
        if self.pending is not None:
            self.pending = self.pending[rows]
        self.tail = self.tail[:, rows]
        if self.recent is not None:
            self.recent = self.recent.select(rows)

    def join(self, other: Streams) -> None:
        """Take in the streams of `other` (read from the same engine) after these ones; both settle first."""
        if other.engine is not self.engine:
            raise CharnnError("only streams of the same model can share a batch")
        if self.logits is None or other.logits is None:
            raise CharnnError("feed both batches before joining them")
        self.settle()
        other.settle()
        histories = [s.recent if s.recent is not None else RecentWindow(s.options.window, s.engine.vocab_size)
                     for s in (self, other)]
        self.options, self.rngs = self.options.join(other.options), self.rngs + other.rngs
        self.state = join_streams(self.state, other.state)
        self.logits = np.concatenate((self.logits, other.logits))
        self.tail = np.concatenate((self.tail, other.tail), axis=1)
        self.recent = histories[0].join(histories[1]) if self.options.penalized else None


def feed_each(batches: Sequence[Streams], texts: Sequence[np.ndarray]) -> None:
    """Feed each batch its own text, all of one length, in one read with every stream side by side: as
    `batch.feed(text)` for each, up to rounding, at the cost of about one (a server reading the prompts
    of requests that arrived together)."""
    if len(batches) == 1:
        batches[0].feed(texts[0])
        return
    texts = [np.asarray(text, dtype=np.int64).ravel() for text in texts]
    if len({len(text) for text in texts}) != 1:
        raise CharnnError("feed_each reads texts of one length")
    for batch in batches:
        batch.settle()  # the ids drawn last, read now: every batch then reads exactly its text
    parts = [batch._steps(text) for batch, text in zip(batches, texts)]
    state = parts[0][1]
    for _, more in parts[1:]:
        state = join_streams(state, more)
    resets = [batch._delimiters(steps) for batch, (steps, _) in zip(batches, parts)]
    logits, state = batches[0].engine.read(np.concatenate([steps for steps, _ in parts], axis=1), state,
                                           None if resets[0] is None else np.concatenate(resets, axis=1))
    start = 0
    for batch, text in zip(batches, texts):
        columns = np.arange(start, start + len(batch))
        batch.logits, batch.state = logits[columns], select_streams(state, columns)
        batch._remember(text)
        start += len(batch)


def sample_streams(engine: Engine, prime: Sequence[int] | np.ndarray, length: int,
                   config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
                   seed: int | None = None) -> Iterator[np.ndarray]:
    """Yield `length` steps of (num_samples,) int64 ids that follow `prime` (at least one id)."""
    require_prime(prime)
    streams = Streams.start(engine, config, num_samples, seed)
    streams.feed(prime)
    yield from streams.sample(length)


def beam_search(engine: Engine, prime: Sequence[int] | np.ndarray, length: int, beams: int = 8,
                repetition_penalty: float = 1.0, repetition_window: int | None = 64) -> Iterator[int]:
    """The most likely `length` characters after `prime` that a beam of `beams` finds, as ids.

    Every step keeps the `beams` likeliest continuations so far (summed log-probabilities, after the
    repetition penalty if one is given: the likeliest text is often a loop). Ids are yielded as soon
    as every beam agrees on them, so the output streams where the search has settled; the rest of the
    best beam follows at the end.
    """
    require_prime(prime)
    if beams < 1:
        raise CharnnError(f"--beam must be at least 1, not {beams}")
    config = SamplingConfig(repetition_penalty=repetition_penalty, repetition_window=repetition_window)
    search = Streams.start(engine, config, seed=0)  # nothing is drawn: the seed never matters
    search.feed(prime)
    with engine.pool:
        engine.pool.set(engine.policy_for(beams).threads)
        yield from _search(search, length, beams)


def _search(search: Streams, length: int, beams: int) -> Iterator[int]:
    vocab_size = search.engine.vocab_size
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
