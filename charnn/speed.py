"""How fast this device trains and scores a model shape: what `--size auto` and scripts/sizing.py
measure before choosing.

A timing runs real training steps (forward, backward, clipping, fused AdamW) on random tokens, after
warm-up steps that pay for allocation and kernel selection, and reports the median step. Nothing
is written and the caller's random state is left as it was.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .evaluate import evaluate
from .model import CharRNN, detach_hidden
from .shapes import Shape, SpeedTable
from .train import make_optimizer


@dataclass(frozen=True)
class Timing:
    """One shape's measured speed on one device."""

    shape: Shape
    step_seconds: float  # the median training step
    steps: int  # steps timed (after the warm-up)

    @property
    def chars_per_sec(self) -> float:
        return self.shape.chars_per_step / self.step_seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(shape: Shape, vocab_size: int, device: torch.device, seconds: float = 1.0,
                  warmup: int = 2, max_steps: int = 50) -> Timing:
    """The median training step of `shape`, timed for about `seconds` (at least 3 steps) after `warmup`."""
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        model = CharRNN(shape.model_config(vocab_size, dropout=0.1)).to(device)
        optimizer = make_optimizer(model, TrainConfig())
        tokens = torch.randint(0, vocab_size, (shape.seq_len + 1, shape.batch_size), device=device)
        inputs, targets = tokens[:-1], tokens[1:]
        hidden, times = None, []
        deadline = None
        while len(times) < max_steps and (len(times) < 3 or time.perf_counter() < deadline):
            started = time.perf_counter()
            logits, hidden = model(inputs, hidden)
            loss = F.cross_entropy(logits.view(-1, vocab_size), targets.reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            hidden = detach_hidden(hidden)
            _sync(device)
            if warmup > 0:
                warmup -= 1
                deadline = time.perf_counter() + seconds
                continue
            times.append(time.perf_counter() - started)
            deadline = deadline or started + seconds
        return Timing(shape, statistics.median(times), len(times))
    finally:
        torch.random.set_rng_state(rng_state)


def time_evaluation(shape: Shape, vocab_size: int, device: torch.device, chars: int = 100_000) -> float:
    """Characters per second that `evaluate` scores with a model of this shape."""
    model = CharRNN(shape.model_config(vocab_size)).to(device)
    tokens = torch.randint(0, vocab_size, (chars + 1,), device=device)
    evaluate(model, tokens[: min(chars, 20_000)])  # warm-up
    _sync(device)
    started = time.perf_counter()
    evaluate(model, tokens)
    _sync(device)
    return chars / (time.perf_counter() - started)


class MeasuredSpeeds:
    """`sizing.Speeds` measured on this device as the rule asks: each shape is timed the first time it is
    needed, until `allowance` seconds have gone into timing; after that (and for a shape whose steps are
    too slow to time in what is left) speeds are estimated from the shapes already timed."""

    def __init__(self, device: torch.device, vocab_size: int, allowance: float, seconds_per_shape: float = 0.2):
        self.device, self.vocab_size = device, vocab_size
        self.allowance, self.seconds_per_shape = allowance, seconds_per_shape
        self.timed: dict[str, float] = {}
        self.spent = 0.0
        self._warm = False

    @property
    def device_type(self) -> str:
        return self.device.type

    def chars_per_sec(self, shape: Shape) -> float:
        if shape.name in self.timed:
            return self.timed[shape.name]
        if self.timed and self._too_slow_to_time(shape):
            return SpeedTable(self.timed, self.device.type).chars_per_sec(shape)
        if not self._warm:  # the first step anywhere pays for imports and kernel set-up: not the shape's cost
            time_training(Shape(1, 8, 1, 2), self.vocab_size, self.device, seconds=0.0, warmup=1)
            self._warm = True
        started = time.perf_counter()
        self.timed[shape.name] = time_training(shape, self.vocab_size, self.device, self.seconds_per_shape).chars_per_sec
        self.spent += time.perf_counter() - started
        return self.timed[shape.name]

    def _too_slow_to_time(self, shape: Shape) -> bool:
        """Over the allowance already, or 6 steps (warm-up and timing) would pass what is left of it."""
        guess = SpeedTable(self.timed, self.device.type).chars_per_sec(shape)
        return self.spent + 6 * shape.chars_per_step / guess > self.allowance
