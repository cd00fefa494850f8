"""Sampling from a `CharRNN`: the library's entry points, and the torch path that samples on a GPU.

`generate`, `TextGenerator` and `beam_search` take a model. On the CPU they sample with the numpy
engine (`charnn.generate.streams`: the one code path there, which `charnn sample` uses without PyTorch); on a
GPU with `TorchGenerator`: the prime read in one pass of the model's forward, then one character at a
time through the torch `Stepper`, every option (temperature, top-k, top-p, min-p, the repetition
penalty, --reset-on) in torch. The torch path is also the reference that tests hold the engine to.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Sequence

import numpy as np
import torch

from . import choice
from ..config import SamplingConfig
from ..errors import CharnnError
from ..model.network import CharRNN, reset_mask, reset_streams
from ..model.stepper import Stepper, engine_from_model
from .streams import Streams, default_prime, fresh_seed, require_prime
from .streams import beam_search as engine_beam_search
from ..data.vocab import Vocab

__all__ = ["TextGenerator", "TorchGenerator", "beam_search", "default_prime", "draw_host", "filter_logits",
           "generate", "penalize_repeats", "preview_text", "sample_next"]


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
    """`draw` for numpy (B, V) logits, every row from one generator (the engine gives each stream its own)."""
    return choice.draw(logits, [rng] * len(logits))


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else fresh_seed())
    return generator


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


class TorchGenerator:
    """A model's sampling state for `num_samples` streams on torch tensors, on the model's device.

    The state carries over between calls (`feed`, `sample`, `reset`), as `Streams` does on the CPU;
    with a model trained with --reset-on, the state restarts at the delimiter, exactly as in training.
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
        self.generator = make_generator(seed, self.device)
        self.stepper = Stepper(model, logit_scale=self.scale)
        self.reset_ids = model.config.reset_ids
        self.reset()

    def reset(self) -> None:
        """Back to the zero state with nothing read."""
        self.state: list | None = None
        self.logits: torch.Tensor | None = None  # (B, V), scaled: what comes next, given everything read
        self.pending: torch.Tensor | None = None  # (B,): drawn and handed out, not yet read
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
            steps = torch.cat([self.pending.view(1, -1), steps])
            self.pending = None
        hidden = None if self.state is None else self.stepper.hidden_from_state(self.state)
        for start in range(0, len(steps), self.PRIME_CHUNK):
            chunk = steps[start : start + self.PRIME_CHUNK]
            resets = reset_mask(chunk, self.reset_ids, self.tail.t()) if self.reset_ids else None
            logits, hidden = self.model(chunk, hidden, resets)
            self._remember(chunk)
        self.logits = logits[-1] * self.scale
        self.state = self.stepper.state_from_hidden(hidden)
        if self.recent is not None:
            self.recent.add(ids.view(-1, 1).expand(-1, self.num_samples))

    def sample(self, length: int) -> Iterator[np.ndarray]:
        """Yield `length` steps of (num_samples,) int64 ids on the host, each drawn and then fed back in.

        Inference mode is entered per step: a generator decorated with it would pay for entering and
        leaving it at every step all the same."""
        if self.logits is None:
            raise CharnnError("nothing to continue from: feed a prime first")
        for _ in range(length):
            with torch.inference_mode():  # the stepper's small operations skip autograd's bookkeeping
                if self.pending is not None:
                    self._step(self.pending)
                self.pending = self._draw()
                ids = self.pending.cpu().numpy()
            yield ids

    def _draw(self) -> torch.Tensor:
        logits = self.logits
        if self.recent is not None:
            logits = penalize_repeats(logits, self.recent.seen(), self.config.repetition_penalty)
        ids = sample_next(logits, self.config, self.generator)
        if self.recent is not None:
            self.recent.add(ids)
        return ids

    def _step(self, ids: torch.Tensor) -> None:
        if self.reset_ids:
            restart = reset_mask(ids.view(1, -1), self.reset_ids, self.tail.t())[0]
            self.state = restart_streams(self.stepper, self.state, restart)
            self._remember(ids.view(1, -1))
        self.logits, self.state = self.stepper(ids, self.state)
        self.pending = None

    def _remember(self, steps: torch.Tensor) -> None:
        """Keep the last len(delimiter) - 1 characters read, (B, n), to find a delimiter across calls."""
        if self.tail.shape[1]:
            self.tail = torch.cat([self.tail, steps.t()], dim=1)[:, -self.tail.shape[1]:]


class TextGenerator:
    """A model's sampling state for `num_samples` streams: feed it text, draw continuations.

    The state carries over between calls, so a conversation-like loop (`charnn sample --interactive`)
    can alternate `feed` and `sample`; `reset` forgets everything. On the CPU it runs on the numpy
    engine (`Streams`), elsewhere on torch (`TorchGenerator`). Sampled ids come out as int64 numpy
    arrays on the host either way: that is where every reader of them (decoding, printing) needs them.
    """

    def __init__(self, model: CharRNN, config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
                 seed: int | None = None):
        model.eval()
        self.reset_ids = model.config.reset_ids
        self.draw_on_host = model.head.weight.device.type == "cpu"  # the whole step, draw included, in numpy
        if self.draw_on_host:
            self.impl = Streams.start(engine_from_model(model), config, num_samples, seed)
            self.scale = 1.0 / config.temperature if config.temperature > 0 else 1.0
        else:
            self.impl = TorchGenerator(model, config, num_samples, seed)

    def feed(self, ids: Sequence[int] | np.ndarray) -> None:
        """Read text (the same for every stream) after whatever was read or drawn before."""
        self.impl.feed(ids)

    def sample(self, length: int) -> Iterator[np.ndarray]:
        """Yield `length` steps of (num_samples,) int64 ids, each drawn and then fed back in."""
        return self.impl.sample(length)

    def reset(self) -> None:
        """Back to the zero state with nothing read."""
        self.impl.reset()

    @property
    def logits(self) -> torch.Tensor | None:
        """(B, V): the logits of what comes next divided by the temperature (None before any text)."""
        logits = self.impl.logits
        if logits is None or not self.draw_on_host:
            return logits
        return torch.from_numpy(logits * np.float32(self.scale))


def generate(
    model: CharRNN,
    prime: Sequence[int] | np.ndarray,
    length: int,
    config: SamplingConfig = SamplingConfig(),
    num_samples: int = 1,
    seed: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield `length` steps of (num_samples,) character ids (int64 numpy arrays) that follow `prime`.

    The prime (at least one id) is read first; then every sampled id is fed back in to produce the next.
    """
    require_prime(prime)
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


def beam_search(model: CharRNN, prime: Sequence[int] | np.ndarray, length: int, beams: int = 8,
                repetition_penalty: float = 1.0, repetition_window: int | None = 64) -> Iterator[int]:
    """The most likely `length` characters after `prime` that a beam of `beams` finds, as ids: with
    the numpy engine on the CPU (`charnn.generate.streams.beam_search`, which says how), with torch elsewhere."""
    if model.head.weight.device.type == "cpu":
        return engine_beam_search(engine_from_model(model.eval()), prime, length, beams, repetition_penalty,
                                  repetition_window)
    return torch_beam_search(model, prime, length, beams, repetition_penalty, repetition_window)


@torch.inference_mode()
def torch_beam_search(model: CharRNN, prime: Sequence[int] | np.ndarray, length: int, beams: int = 8,
                      repetition_penalty: float = 1.0, repetition_window: int | None = 64) -> Iterator[int]:
    """`charnn.generate.streams.beam_search` on torch tensors, on the model's device."""
    require_prime(prime)
    if beams < 1:
        raise CharnnError(f"--beam must be at least 1, not {beams}")
    config = SamplingConfig(repetition_penalty=repetition_penalty, repetition_window=repetition_window)
    searcher = TorchGenerator(model, config, num_samples=1)
    searcher.feed(prime)
    recent, stepper, vocab_size = searcher.recent, searcher.stepper, model.config.vocab_size
    state, tail = searcher.state, searcher.tail
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
