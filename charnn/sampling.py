"""Sampling: warm the state up on a prime, then generate one character at a time.

Each sampled character is fed back in as the next input, through a stepper (`charnn.stepper`)
that runs the recurrence with the model's own matrices, one step at a time.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import torch

from .config import SamplingConfig
from .errors import CharnnError
from .model import CharRNN, reset_mask, reset_streams
from .stepper import BlasStepper, make_stepper
from .vocab import Vocab


def filter_logits(logits: torch.Tensor, config: SamplingConfig) -> torch.Tensor:
    """Apply temperature, top-k, top-p and min-p to (B, V) logits; removed entries become -inf."""
    if config.temperature != 1.0:
        logits = logits / config.temperature
    if config.top_k is not None and config.top_k < logits.shape[-1]:
        kth = torch.topk(logits, config.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -torch.inf)
    if config.top_p is not None and config.top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a character when the ones more likely than it already reach top_p
        drop_sorted = probs.cumsum(dim=-1) - probs >= config.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, -torch.inf)
    if config.min_p:  # p_i >= min_p * p_max  <=>  logit_i >= logit_max + log(min_p)
        floor = logits.max(dim=-1, keepdim=True).values + float(np.log(config.min_p))
        logits = logits.masked_fill(logits < floor, -torch.inf)
    return logits


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' (CTRL's) repetition penalty on (B, V) logits: a seen character's logit is divided
    by `penalty` when positive and multiplied by it when negative, so it always becomes less likely."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def sample_next(logits: torch.Tensor, config: SamplingConfig, generator: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) ids."""
    if config.temperature == 0:
        return logits.argmax(dim=-1)  # no filter ever removes the likeliest character
    return draw(filter_logits(logits.float(), config).softmax(dim=-1), generator)


def draw(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One draw per row of (B, V) probabilities: the argmax of p / E with E ~ Exp(1).

    Row i wins with probability p_i (the smallest of exponentials with rates p_i), and a zero
    probability never wins. torch.multinomial does the same for one sample, at several times the
    cost per call, which matters when a step takes a fraction of a millisecond.
    """
    noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(dim=-1)


def draw_host(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`draw` for numpy (B, V) logits, without a torch call: a few microseconds where the torch
    version takes some fifteen. exp(logit - max) is proportional to the probability, which is all
    the argmax of p / E needs. The noise is float64, so it is never exactly zero."""
    weights = np.exp(logits - logits.max(axis=1, keepdims=True))
    weights /= rng.standard_exponential(weights.shape)
    return weights.argmax(axis=1)


def default_prime(vocab: Vocab, reset_ids: Sequence[int] = ()) -> list[int]:
    """Without a prime, start where texts usually do: after a newline (else the first character), or
    for a model trained with --reset-on, after its delimiter, where every record starts."""
    if reset_ids:
        return list(reset_ids)
    if vocab.mode == "byte":
        return [ord("\n")]
    index = vocab.chars.find("\n")
    return [index if index >= 0 else 0]


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else fresh_seed())
    return generator


def fresh_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") >> 1


def restart_streams(stepper, state: list, restart: torch.Tensor) -> list:
    """A stepper's state with the streams marked in `restart` (B,) back at zero (--reset-on)."""
    if not bool(restart.any()):
        return state
    return stepper.state_from_hidden(reset_streams(stepper.hidden_from_state(state), restart))


class RecentCharacters:
    """Which characters each stream produced (or was primed with) lately, for the repetition penalty."""

    def __init__(self, num_streams: int, vocab_size: int, window: int | None, device: torch.device):
        self.window = window
        self.counts = torch.zeros(num_streams, vocab_size, dtype=torch.int32, device=device)
        self.ring = torch.full((num_streams, window or 1), -1, dtype=torch.int64, device=device)
        self.position = 0

    def add(self, ids: torch.Tensor) -> None:
        """ids (B,) or (T, B), oldest first."""
        steps = ids.view(-1, self.counts.shape[0])
        if self.window is None:  # everything counts forever
            self.counts.scatter_add_(1, steps.t(), torch.ones_like(steps.t(), dtype=torch.int32))
            return
        for step in steps[-self.window :]:  # older ones would leave the window again anyway
            slot = self.position % self.window
            if self.position >= self.window:
                old = self.ring[:, slot : slot + 1]
                self.counts.scatter_add_(1, old, torch.full_like(old, -1, dtype=torch.int32))
            self.ring[:, slot] = step
            self.counts.scatter_add_(1, step.view(-1, 1), torch.ones_like(step.view(-1, 1), dtype=torch.int32))
            self.position += 1

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep the history of these streams (beam search: each new beam inherits its parent's)."""
        self.counts, self.ring = self.counts[rows], self.ring[rows]

    def seen(self) -> torch.Tensor:
        return self.counts > 0


class TextGenerator:
    """A model's sampling state for `num_samples` streams: feed it text, draw continuations.

    The state carries over between calls, so a conversation-like loop (`charnn sample --interactive`)
    can alternate `feed` and `sample`; `reset` forgets everything. With a model trained with
    --reset-on, the state restarts at the delimiter here too, exactly as in training.

    With numpy's stepper (one stream on the CPU), the logits, the drawn ids and the state stay numpy
    arrays from step to step; torch only sees them for the options written in torch (top-k, top-p,
    min-p, the repetition penalty, --reset-on). Sampled ids come out as numpy arrays on the host
    either way: that is where every reader of them (decoding, printing) needs them.
    """

    PRIME_CHUNK = 1024  # prime steps per forward pass: bounds the logits kept for a long prime

    def __init__(self, model: CharRNN, config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
                 seed: int | None = None):
        model.eval()
        self.model = model
        self.num_samples = num_samples
        self.device = model.head.weight.device
        config = config.validate(model.config.vocab_size)
        # 1/temperature folded into the output layer once, not applied at every step
        self.scale = 1.0 / config.temperature if config.temperature > 0 else 1.0
        self.config = replace(config, temperature=1.0) if config.temperature > 0 else config
        seed = fresh_seed() if seed is None else seed
        self.generator = make_generator(seed, self.device)
        self.rng = np.random.default_rng(seed)
        self.stepper = make_stepper(model, logit_scale=self.scale, streams=num_samples)
        self.on_host = isinstance(self.stepper, BlasStepper)
        filtered = config.top_k is not None or (config.top_p or 1) < 1 or bool(config.min_p)
        self.draw_on_host = self.on_host and not filtered and config.repetition_penalty == 1.0
        self.reset_ids = model.config.reset_ids
        self.reset()

    def reset(self) -> None:
        """Back to the zero state with nothing read."""
        self.state: list | None = None
        self._logits = None  # (B, V), as the stepper gives them: what comes next, given everything read
        self.pending = None  # (B,): drawn and handed out, not yet read
        self.tail = torch.full((self.num_samples, max(len(self.reset_ids) - 1, 0)), -1, dtype=torch.int64,
                               device=self.device)  # the last characters read: a delimiter may straddle calls
        self.recent = None
        if self.config.repetition_penalty != 1.0:
            self.recent = RecentCharacters(self.num_samples, self.model.config.vocab_size,
                                           self.config.repetition_window, self.device)

    @torch.inference_mode()
    def feed(self, ids: Sequence[int] | np.ndarray) -> None:
        """Read text (the same for every stream) after whatever was read or drawn before."""
        ids = torch.as_tensor(np.asarray(ids, dtype=np.int64), device=self.device)
        if len(ids) == 0:
            return
        steps = ids.view(-1, 1).expand(-1, self.num_samples)  # (P, B)
        if self.pending is not None:
            steps = torch.cat([self._tensor(self.pending).view(1, -1), steps])
            self.pending = None
        hidden = None if self.state is None else self.stepper.hidden_from_state(self.state)
        for start in range(0, len(steps), self.PRIME_CHUNK):
            chunk = steps[start : start + self.PRIME_CHUNK]
            resets = reset_mask(chunk, self.reset_ids, self.tail.t()) if self.reset_ids else None
            logits, hidden = self.model(chunk, hidden, resets)
            self._remember(chunk)
        self._logits = logits[-1] * self.scale
        if self.on_host:
            self._logits = self._logits.numpy()
        self.state = self.stepper.state_from_hidden(hidden)
        if self.recent is not None:
            self.recent.add(ids.view(-1, 1).expand(-1, self.num_samples))

    @property
    def logits(self) -> torch.Tensor | None:
        """(B, V): the scaled logits of what comes next, given everything read (None before any text)."""
        return None if self._logits is None else self._tensor(self._logits)

    def sample(self, length: int) -> Iterator[np.ndarray]:
        """Yield `length` steps of (num_samples,) int64 ids, each drawn and then fed back in.

        Only torch's stepper runs under inference mode, entered per step: numpy's makes no torch call
        a step, and a generator decorated with inference mode pays for entering and leaving it at every
        step all the same (the steppers hold detached weights, so nothing records gradients anyway).
        """
        if self._logits is None:
            raise CharnnError("nothing to continue from: feed a prime first")
        for _ in range(length):
            if self.on_host:
                yield self._advance()
            else:
                with torch.inference_mode():  # the torch stepper's small operations skip autograd's bookkeeping
                    ids = self._advance().cpu().numpy()
                yield ids

    def _advance(self):
        """Read the pending ids, if any, and draw the next ones."""
        if self.pending is not None:
            self._step(self.pending)
        self.pending = self._draw()
        return self.pending

    def _draw(self):
        """The next ids, as the stepper takes them (numpy for numpy's)."""
        if self.draw_on_host:
            return draw_host(self._logits, self.rng) if self.config.temperature > 0 else self._logits.argmax(axis=1)
        logits = self._tensor(self._logits)
        if self.recent is not None:
            logits = penalize_repeats(logits, self.recent.seen(), self.config.repetition_penalty)
        ids = sample_next(logits, self.config, self.generator)
        if self.recent is not None:
            self.recent.add(ids)
        return ids.numpy() if self.on_host else ids

    def _step(self, ids) -> None:
        if self.reset_ids:
            tensor = self._tensor(ids).view(1, -1)
            restart = reset_mask(tensor, self.reset_ids, self.tail.t())[0]
            self.state = restart_streams(self.stepper, self.state, restart)
            self._remember(tensor)
        step = self.stepper.step if self.on_host else self.stepper
        self._logits, self.state = step(ids, self.state)
        self.pending = None

    def _tensor(self, array) -> torch.Tensor:
        return torch.from_numpy(array) if isinstance(array, np.ndarray) else array

    def _remember(self, steps: torch.Tensor) -> None:
        """Keep the last len(delimiter) - 1 characters read, (B, n), to find a delimiter across calls."""
        if self.tail.shape[1]:
            self.tail = torch.cat([self.tail, steps.t()], dim=1)[:, -self.tail.shape[1]:]


def generate(
    model: CharRNN,
    prime: Sequence[int] | np.ndarray,
    length: int,
    config: SamplingConfig = SamplingConfig(),
    num_samples: int = 1,
    seed: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield `length` steps of (num_samples,) character ids (int64 numpy arrays) that follow `prime`.

    The prime (at least one id) is read in one pass of the model's own forward;
    then every sampled id is fed back in to produce the next.
    """
    if len(prime) == 0:
        raise CharnnError("the prime is empty", hint="give at least one character, or none to use the default")
    generator = TextGenerator(model, config, num_samples=num_samples, seed=seed)
    generator.feed(prime)
    yield from generator.sample(length)


def preview_text(model: CharRNN, vocab: Vocab, length: int, seed: int) -> str:
    """A short sample from the default prime, for watching a model learn. Its random numbers come from
    a generator of its own, so a training run that previews stays what it was; the model is put back
    in training mode afterwards."""
    prime = default_prime(vocab, model.config.reset_ids)
    try:
        steps = list(generate(model, prime, length, seed=seed))
    finally:
        model.train()
    return vocab.decode(np.concatenate(steps))


@torch.inference_mode()
def beam_search(model: CharRNN, prime: Sequence[int] | np.ndarray, length: int, beams: int = 8,
                repetition_penalty: float = 1.0, repetition_window: int | None = 64) -> Iterator[int]:
    """The most likely `length` characters after `prime` that a beam of `beams` finds, as ids.

    Every step keeps the `beams` likeliest continuations so far (summed log-probabilities, after the
    repetition penalty if one is given: the likeliest text is often a loop). Ids are yielded as soon
    as every beam agrees on them, so the output streams where the search has settled; the rest of the
    best beam follows at the end.
    """
    if len(prime) == 0:
        raise CharnnError("the prime is empty", hint="give at least one character, or none to use the default")
    if beams < 1:
        raise CharnnError(f"--beam must be at least 1, not {beams}")
    config = SamplingConfig(repetition_penalty=repetition_penalty, repetition_window=repetition_window)
    searcher = TextGenerator(model, config, num_samples=1)
    searcher.feed(prime)
    recent = searcher.recent
    stepper, vocab_size = make_stepper(model, streams=beams), model.config.vocab_size
    state, tail = stepper.state_from_hidden(searcher.stepper.hidden_from_state(searcher.state)), searcher.tail
    scores = torch.zeros(1, device=searcher.device, dtype=torch.float64)
    unsettled = torch.zeros(1, 0, dtype=torch.int64, device=searcher.device)  # (K, t): where the beams differ
    logits = searcher.logits
    for step in range(length):
        if recent is not None:
            logits = penalize_repeats(logits, recent.seen(), repetition_penalty)
        log_probs = logits.float().log_softmax(dim=-1)
        candidates = (scores.view(-1, 1) + log_probs).view(-1)  # (K * V,)
        top = torch.topk(candidates, min(beams, candidates.numel()))
        parents, ids = top.indices // vocab_size, top.indices % vocab_size
        scores = top.values
        unsettled = torch.cat([unsettled[parents], ids.view(-1, 1)], dim=1)
        if recent is not None:
            recent.reorder(parents)
            recent.add(ids)
        agreed = int((unsettled == unsettled[:1]).all(dim=0).long().cumprod(dim=0).sum())
        yield from unsettled[0, :agreed].tolist()
        unsettled = unsettled[:, agreed:]
        if step + 1 == length:
            break
        state = stepper.select(state, parents)
        if searcher.reset_ids:
            tail = torch.cat([tail[parents], ids.view(-1, 1)], dim=1)
            restart = reset_mask(tail[:, -1:].t(), searcher.reset_ids, tail[:, :-1].t())[0]
            state = restart_streams(stepper, state, restart)
            tail = tail[:, 1:]
        logits, state = stepper(ids, state)
    yield from unsettled[int(scores.argmax())].tolist()
