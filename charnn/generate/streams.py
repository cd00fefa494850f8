"""Streams of text drawn side by side from a model, whatever steps it: the one sampler.

`Streams` is a batch: the recurrent state of every stream, the logits of what each reads next, its
sampling options, its random number generator, its repetition history and the characters that might
begin a record delimiter. Text is fed to every stream at once; each step draws one character per stream
(`charnn.generate.choice`, on the logits as numpy arrays) and reads it back in. Streams can be dropped or
reordered (`keep`) and batches joined (`join`) between steps, so streams started apart can share the
steps that follow. `charnn sample` (one stream, `--num-samples`, `--interactive`, `--beam`) and `charnn
serve` run here.

What steps the model is a `Steps`: the numpy `Engine` on the CPU (without PyTorch), or `TorchSteps` over
PyTorch's stepper on a GPU; `charnn.generate.sampler` chooses, once.
"""

from __future__ import annotations

import os
from time import perf_counter
from typing import ContextManager, Iterator, Protocol, Sequence

import numpy as np

from ..config import ModelConfig
from ..data.vocab import Vocab
from ..errors import CharnnError
from .choice import RecentWindow, StreamOptions, choose, stream_rng
from .settings import SamplingConfig, check


class Steps(Protocol):
    """What steps a model, for `Streams`: the numpy `Engine` (charnn.model.engine) or `TorchSteps` (PyTorch's
    stepper, charnn.model.stepper). Ids and logits are numpy arrays on the host, ids (T, B) or (B,) and
    logits (B, V); a state is the stepper's own, a list with an entry per layer, its streams selected,
    joined and zeroed by the stepper. `pool` is a context inside which `pool.set(n)` sizes the threads the
    steps use, and `policy_for(streams)` the thread policy (`start`, `finish`, `threads`) for a batch."""

    config: ModelConfig
    vocab_size: int
    device: str
    pool: ContextManager

    def policy_for(self, streams: int): ...

    def zero_state(self, streams: int) -> list: ...

    def read(self, ids: np.ndarray, state: list, resets: np.ndarray | None = None) -> tuple[np.ndarray, list]: ...

    def step(self, ids: np.ndarray, state: list) -> tuple[np.ndarray, list]: ...

    def select(self, state: list, rows: np.ndarray) -> list: ...

    def join(self, first: list, second: list) -> list: ...

    def zero(self, state: list, mask: np.ndarray) -> list: ...


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


def alike(config: SamplingConfig, num_samples: int, seed: int | None,
          vocab_size: int) -> tuple[StreamOptions, list[np.random.Generator]]:
    """The options and generators of `num_samples` streams alike: the same (validated) options, and
    generators from one seed (None: a fresh one), stream i's as `charnn sample --seed` gives sample i."""
    check("num_samples", num_samples)
    config = config.validate(vocab_size)
    seed = fresh_seed() if seed is None else check("seed", seed)
    return StreamOptions.of([config] * num_samples), [stream_rng(seed, i) for i in range(num_samples)]


class Streams:
    """Streams sampled side by side from one model, each with its own options and random numbers.

    The state carries over between calls, so a conversation-like loop (`charnn sample --interactive`)
    can alternate `feed` and `sample`; `reset` forgets everything. With a model trained with
    --reset-on, a stream's state restarts at the delimiter, exactly as in training.
    """

    def __init__(self, model: Steps, options: StreamOptions, rngs: Sequence[np.random.Generator]):
        if len(options) != len(rngs) or len(options) < 1:
            raise CharnnError(f"need one generator per stream and at least one stream, not {len(rngs)}")
        self.model, self.options, self.rngs = model, options, list(rngs)
        self.reset_ids = tuple(model.config.reset_ids)
        self.reset()

    @staticmethod
    def start(model: Steps, config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
              seed: int | None = None) -> Streams:
        """`num_samples` streams alike (see `alike`)."""
        return Streams(model, *alike(config, num_samples, seed, model.vocab_size))

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
        self.recent = RecentWindow(self.options.window, self.model.vocab_size) if self.options.penalized else None

    # --- reading -----------------------------------------------------------------------------

    def feed(self, ids: Sequence[int] | np.ndarray) -> None:
        """Read text (the same for every stream) after whatever each stream read or drew before."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if len(ids) == 0:
            return
        streams = len(self)
        if self.state is None and self.pending is None:  # every stream is alike: read once, then copy
            self.tail, state = self.tail[:, :1], self.model.zero_state(1)
            logits, state = self.model.read(ids[:, None], state, self._delimiters(ids[:, None]))
            self.logits = np.repeat(logits, streams, axis=0)
            self.state = self.model.select(state, np.zeros(streams, dtype=np.int64))
            self.tail = np.repeat(self.tail, streams, axis=1)
        else:
            steps, state = self._steps(ids)
            self.logits, self.state = self.model.read(steps, state, self._delimiters(steps))
        self._remember(ids)

    def feed_but_last(self, ids: Sequence[int] | np.ndarray) -> None:
        """As `feed`, except that the last id is left for the next step to read with whatever else it
        reads: a server's new request reads a one-character prompt (an empty one's default start) in its
        batch's step instead of in a model pass of its own. Its logits then wait for that step."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        require_prime(ids)
        self.feed(ids[:-1])
        self.settle()  # what was drawn before the last id is read first, in order
        self.take(np.full(len(self), ids[-1], dtype=np.int64))
        self.logits = None  # they follow what was read, not the id now pending

    def _steps(self, ids: np.ndarray) -> tuple[np.ndarray, list]:
        """What the streams read for `ids` (T, B), after the ids drawn last if they are not read yet, and
        the state they start from."""
        steps = np.broadcast_to(ids[:, None], (len(ids), len(self)))
        if self.pending is not None:
            steps = np.concatenate((self.pending[None], steps))
            self.pending = None
        return steps, self.state if self.state is not None else self.model.zero_state(len(self))

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
        state = self.state if self.state is not None else self.model.zero_state(len(self))
        if self.reset_ids:  # a stream that completes the delimiter reads its last character from zero
            state = self.model.zero(state, self._delimiters(ids[None])[0])
        self.logits, self.state = self.model.step(ids, state)

    # --- drawing -----------------------------------------------------------------------------

    def sample(self, length: int) -> Iterator[np.ndarray]:
        """Yield `length` steps of (B,) int64 ids, each drawn and then read back in (numpy's BLAS held to
        the model's threads for this many streams meanwhile)."""
        with self.model.pool:
            policy = self.model.policy_for(len(self))
            for _ in range(length):
                policy.start()
                started = perf_counter()
                ids = self.advance()
                policy.finish(perf_counter() - started, len(ids))
                yield ids

    def advance(self) -> np.ndarray:
        """Read the ids drawn last, draw the next ones (B,) and hand them out."""
        self.settle()
        if self.logits is None:
            raise CharnnError("nothing to continue from: feed a prime first")
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
            self.state = self.model.select(self.state, rows)
        if self.logits is not None:
            self.logits = self.logits[rows]
        if self.pending is not None:
            self.pending = self.pending[rows]
        self.tail = self.tail[:, rows]
        if self.recent is not None:
            self.recent = self.recent.select(rows)

    def fan_out(self, options: StreamOptions, rngs: Sequence[np.random.Generator]) -> None:
        """This one stream, having read a prompt, as len(rngs) streams with these options and generators:
        the same state and history each (n choices of one prompt read it once, not n times)."""
        if len(self) != 1 or len(options) != len(rngs):
            raise CharnnError("only one stream fans out, to one generator per stream")
        self.keep(np.zeros(len(rngs), dtype=np.int64))
        self.options, self.rngs = options, list(rngs)

    def join(self, other: Streams) -> None:
        """Take in the streams of `other` (read from the same model) after these ones. Both settle first,
        unless both have ids still to read (drawn, or left by `feed_but_last`): the next step reads those."""
        if other.model is not self.model:
            raise CharnnError("only streams of the same model can share a batch")
        if any(s.logits is None and s.pending is None for s in (self, other)):
            raise CharnnError("feed both batches before joining them")
        if self.pending is None or other.pending is None:
            self.settle()
            other.settle()
        histories = [s.recent if s.recent is not None else RecentWindow(s.options.window, s.model.vocab_size)
                     for s in (self, other)]
        self.state = self.model.join(*[s.state if s.state is not None else s.model.zero_state(len(s))
                                       for s in (self, other)])  # before len(self) counts the others
        self.options, self.rngs = self.options.join(other.options), self.rngs + other.rngs
        if self.pending is not None:  # both still to read what they drew: in one step, side by side
            self.pending, self.logits = np.concatenate((self.pending, other.pending)), None
        else:
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
    model = batches[0].model
    for batch in batches:
        batch.settle()  # the ids drawn last, read now: every batch then reads exactly its text
    parts = [batch._steps(text) for batch, text in zip(batches, texts)]
    state = parts[0][1]
    for _, more in parts[1:]:
        state = model.join(state, more)
    resets = [batch._delimiters(steps) for batch, (steps, _) in zip(batches, parts)]
    logits, state = model.read(np.concatenate([steps for steps, _ in parts], axis=1), state,
                               None if resets[0] is None else np.concatenate(resets, axis=1))
    start = 0
    for batch, text in zip(batches, texts):
        columns = np.arange(start, start + len(batch))
        batch.logits, batch.state = logits[columns], model.select(state, columns)
        batch._remember(text)
        start += len(batch)


def sample_streams(model: Steps, prime: Sequence[int] | np.ndarray, length: int,
                   config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
                   seed: int | None = None) -> Iterator[np.ndarray]:
    """Yield `length` steps of (num_samples,) int64 ids that follow `prime` (at least one id)."""
    require_prime(prime)
    streams = Streams.start(model, config, num_samples, seed)
    streams.feed(prime)
    yield from streams.sample(length)
