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
from typing import Callable

import torch
import torch.nn.functional as F

from .config import TrainConfig
from .evaluate import evaluate
from .model import CharRNN, detach_hidden
from .shapes import CPU_REFERENCE, CPU_SPEEDS, Shape, SpeedTable, parse_shape
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
    """The median training step of `shape`: `warmup` steps, then steps for about `seconds`, at least 3
    unless a loaded machine makes that take three times as long."""
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(0)
        step = _training_step(shape, vocab_size, device)
        for _ in range(warmup):
            step()
        times, start = [], time.perf_counter()
        while len(times) < max_steps:
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
            spent = time.perf_counter() - start
            if spent >= seconds and len(times) >= 3 or spent >= 3 * seconds:
                break
        return Timing(shape, statistics.median(times), len(times))
    finally:
        torch.random.set_rng_state(rng_state)


def _training_step(shape: Shape, vocab_size: int, device: torch.device) -> Callable[[], None]:
    """One training step of a fresh model of `shape` on random tokens, as the trainer takes it."""
    model = CharRNN(shape.model_config(vocab_size, dropout=0.1)).to(device)
    optimizer = make_optimizer(model, TrainConfig())
    tokens = torch.randint(0, vocab_size, (shape.seq_len + 1, shape.batch_size), device=device)
    inputs, targets = tokens[:-1], tokens[1:]
    hidden = [None]

    def step() -> None:
        logits, state = model(inputs, hidden[0])
        loss = F.cross_entropy(logits.view(-1, vocab_size), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        hidden[0] = detach_hidden(state)
        _sync(device)

    return step


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
    """`sizing.Speeds` for this device. On a CPU, where the shapes' relative speeds are those the study
    measured (shapes.CPU_SPEEDS), one timing of the reference shape scales the whole table. Elsewhere
    each shape is timed the first time it is needed, until `allowance` seconds have gone into timing;
    after that, speeds are interpolated from the shapes already timed."""

    def __init__(self, device: torch.device, vocab_size: int, allowance: float, seconds_per_shape: float = 0.3):
        self.device, self.vocab_size = device, vocab_size
        self.allowance, self.seconds_per_shape = allowance, seconds_per_shape
        self.timed: dict[str, float] = {}
        self.spent = 0.0
        self._warm = False

    @property
    def device_type(self) -> str:
        return self.device.type

    def chars_per_sec(self, shape: Shape) -> float:
        if self.device.type == "cpu":
            reference = self._time(parse_shape(CPU_REFERENCE))
            return SpeedTable(CPU_SPEEDS, "cpu", reference / CPU_SPEEDS[CPU_REFERENCE]).chars_per_sec(shape)
        if shape.name in self.timed or not self.timed or self.spent < self.allowance:
            return self._time(shape)
        return SpeedTable(self.timed, self.device.type).chars_per_sec(shape)

    def _time(self, shape: Shape) -> float:
        if shape.name not in self.timed:
            if not self._warm:  # the first step anywhere pays for imports and kernel set-up, not the shape's cost
                time_training(Shape(1, 8, 1, 2), self.vocab_size, self.device, seconds=0.0, warmup=1)
                self._warm = True
            started = time.perf_counter()
            timing = time_training(shape, self.vocab_size, self.device, self.seconds_per_shape)
            self.timed[shape.name] = timing.chars_per_sec
            self.spent += time.perf_counter() - started
        return self.timed[shape.name]
