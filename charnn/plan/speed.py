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

from ..config import TrainConfig
from ..evaluate.score import evaluate
from ..model.network import CharRNN, detach_hidden
from ..model.precision import MIN_GAIN, Precision, check_precision, mixed_candidate
from ..model.spec import training_bytes
from ..model.step import clip_gradients, forward_backward, make_optimizer, optimizer_step
from ..runtime.device import torch_trial
from ..runtime.memory import available_bytes
from ..runtime.contention import viable
from ..runtime.threads import ThreadChoice, resolve_threads
from .memory import SpeedMemory
from .shapes import CPU_REFERENCE, CPU_SPEEDS, Shape, SpeedTable, parse_shape


MAX_TIMED_STEPS = 50  # a timing's steps at most: a small model's steps agree long before


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


def time_training(shape: Shape, vocab_size: int, device: torch.device, seconds: float = 1.0, warmup: int = 2,
                  threads: int | None = None, give_up: float | None = None, precision: str = "fp32") -> Timing:
    """The median training step of `shape` in `precision`: `warmup` steps, then steps for about `seconds`
    (at most MAX_TIMED_STEPS), at least 3 unless a loaded machine makes that take three times as long; on
    `threads` threads (None: as set).
    A step that takes longer than `give_up` seconds ends the timing at once (a thread count that waits
    for a busy neighbour can make a step take seconds: one such step is answer enough)."""
    rng_state, before = torch.random.get_rng_state(), torch.get_num_threads()
    try:
        torch.manual_seed(0)
        if threads is not None and device.type == "cpu":
            torch.set_num_threads(threads)
        step = _training_step(shape, vocab_size, device, Precision(precision))
        times, start = [], time.perf_counter()
        while len(times) < MAX_TIMED_STEPS:
            started = time.perf_counter()
            step()
            took = time.perf_counter() - started
            if give_up is not None and took > give_up * (2 if warmup > 0 else 1):  # a first step allocates
                return Timing(shape, took, 1)
            if warmup > 0:
                warmup -= 1
                start = time.perf_counter()
                continue
            times.append(took)
            spent = time.perf_counter() - start
            enough = min(seconds, 20 * statistics.median(times))  # a small model's steps agree sooner
            if spent >= enough and len(times) >= 3 or spent >= 3 * seconds:
                break
        return Timing(shape, statistics.median(times), len(times))
    finally:
        torch.random.set_rng_state(rng_state)
        torch.set_num_threads(before)


def _training_step(shape: Shape, vocab_size: int, device: torch.device,
                   precision: Precision = Precision("fp32")) -> Callable[[], None]:
    """One training step of a fresh model of `shape` on random tokens, as the trainer takes it."""
    model = CharRNN(shape.model_config(vocab_size, dropout=0.1)).to(device)
    optimizer, scaler = make_optimizer(model, TrainConfig()), precision.scaler(device)
    tokens = torch.randint(0, vocab_size, (shape.seq_len + 1, shape.batch_size), device=device)
    inputs, targets = tokens[:-1], tokens[1:]
    hidden = [None]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        _, state = forward_backward(model, inputs, targets, hidden[0], None, precision, scaler)
        clip_gradients(model, optimizer, 1.0, scaler)
        optimizer_step(optimizer, scaler)
        hidden[0] = detach_hidden(state)
        _sync(device)

    return step


def choose_precision(requested: str, shape: Shape, vocab_size: int, device: torch.device,
                     seconds: float = 0.25) -> tuple[str, str]:
    """The precision a run of `shape` trains in, and why: what the user asked for; or, for auto, the
    device's mixed precision if a timing shows it MIN_GAIN times as fast as float32, else float32."""
    if requested != "auto":
        return check_precision(requested, device), "asked for"
    mixed = mixed_candidate(device)
    if mixed is None:
        return "fp32", f"{device.type}: no native bf16 here"
    fp32, low = (time_training(shape, vocab_size, device, seconds, precision=p).chars_per_sec for p in ("fp32", mixed))
    gain = low / fp32
    chosen = mixed if gain >= MIN_GAIN else "fp32"
    return chosen, f"{mixed} trains {shape.num_layers}x{shape.hidden_size} at {gain:.2f}x float32's speed here " \
                   f"({low:,.0f} against {fp32:,.0f} characters a second; {MIN_GAIN:g}x needed)"


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
    """`sizing.Speeds` for this device, measured so that a busy moment cannot fool it.

    Each shape is timed at every thread count charnn's policy may choose (charnn.runtime.threads), in
    `ROUNDS` rounds, and the best rate kept: sharing the machine only ever slows a timing, and the
    training then runs at the best count too. On a CPU the shapes' relative speeds are those the study
    measured (shapes.CPU_SPEEDS) and the timing of the reference shape scales them; `check` then times
    the shapes a choice turns on, which are taken at their own timing from then on (a machine unlike
    the study's, or bf16, keeps other relative speeds). Elsewhere each shape is timed the first time it
    is needed. Timing stops once `allowance` seconds have gone into it; after that, speeds are
    interpolated from the shapes already timed. With a `memory` (charnn.plan.memory), a shape's rate is
    the better of its timing and the best this machine has shown before, and a better timing is kept."""

    ROUNDS = 2

    def __init__(self, device: torch.device, vocab_size: int, allowance: float, seconds_per_shape: float = 0.25,
                 threads: ThreadChoice | None = None, precision: str = "fp32", memory: SpeedMemory | None = None):
        self.device, self.vocab_size, self.precision, self.memory = device, vocab_size, precision, memory
        self.remembered: set[str] = set()  # shapes whose rate is the memory's, better than this timing
        self.allowance, self.seconds_per_shape = allowance, seconds_per_shape
        self.threads = threads or resolve_threads()
        self.timed: dict[str, float] = {}
        self.best_threads: dict[str, int] = {}
        self.spent = 0.0
        self._warm = False

    @property
    def device_type(self) -> str:
        return self.device.type

    def chars_per_sec(self, shape: Shape) -> float:
        if shape.name in self.timed:
            return self.timed[shape.name]
        if self.device.type == "cpu":
            return self._cpu_table().chars_per_sec(shape)
        if not self.timed or self.spent < self.allowance:
            return self._time(shape)
        return SpeedTable(self.timed, self.device.type).chars_per_sec(shape)

    def _cpu_table(self) -> SpeedTable:
        factor = self._time(parse_shape(CPU_REFERENCE)) / CPU_SPEEDS[CPU_REFERENCE]
        return SpeedTable({**{name: speed * factor for name, speed in CPU_SPEEDS.items()}, **self.timed}, "cpu")

    def check(self, shapes: list[Shape], force: bool = False) -> bool:
        """Time those of `shapes` not timed yet (those a choice turns on) while the allowance lasts (with
        `force`, once at least); True if any was, so that the choice is made again with their speeds."""
        new = [shape for shape in shapes if shape.name not in self.timed and (force or self.spent < self.allowance)]
        for shape in new:
            if force or self.spent < self.allowance:
                self._time(shape)
        return bool(new)

    def retime(self, shape: Shape) -> float:
        """Time `shape` once more, beyond the allowance, keeping the better rate (for a close call)."""
        before = self.timed.pop(shape.name, None)
        rate = self._time(shape)
        if before is not None and shape.name in self.timed:
            self.timed[shape.name] = rate = max(before, rate)
        return rate

    def record(self) -> dict:
        """What was timed, for the run's config.json: each shape's best rate and the threads it came at."""
        return {name: {"chars_per_sec": round(rate, 1), "threads": self.best_threads.get(name),
                       **({"remembered": True} if name in self.remembered else {})}
                for name, rate in self.timed.items()}

    def _fits(self, shape: Shape) -> bool:
        """Whether a step of `shape` fits in half the free memory (a shape that does not is the run's
        memory check's to refuse, in words, not a timing's to crash on)."""
        try:
            free = available_bytes(self.device.type)
        except (RuntimeError, AssertionError):  # a device that cannot say
            free = None
        need = training_bytes(shape.model_config(self.vocab_size), shape.batch_size, shape.seq_len)
        return free is None or need <= free // 2

    def _time(self, shape: Shape) -> float:
        if shape.name not in self.timed and not self._fits(shape):
            return self._cpu_table().chars_per_sec(shape) if self.device.type == "cpu" else 1.0
        if shape.name not in self.timed:
            if not self._warm:  # the first step anywhere pays for imports and kernel set-up, not the shape's cost
                time_training(Shape(1, 8, 1, 2), self.vocab_size, self.device, seconds=0.0, warmup=1,
                              precision=self.precision)
                self._warm = True
            started = time.perf_counter()
            counts = viable(list(self.threads.candidates), torch_trial, 2.0) if self.device.type == "cpu" else [None]
            best, best_count = 0.0, None
            for _ in range(self.ROUNDS):
                for count in counts:
                    give_up = 2 * shape.chars_per_step / best if best else None
                    rate = time_training(shape, self.vocab_size, self.device, self.seconds_per_shape,
                                         threads=count, give_up=give_up, precision=self.precision).chars_per_sec
                    if rate > best:
                        best, best_count = rate, count
                if time.perf_counter() - started + self.spent >= self.allowance:
                    break
            self.spent += time.perf_counter() - started
            remembered = self.memory.best(shape.name, self.precision) if self.memory is not None else None
            if self.memory is not None:
                self.memory.remember(shape.name, self.precision, best)
            if remembered is not None and remembered > best:  # a neighbour slowed this timing, not the machine
                best, best_count = remembered, self.best_threads.get(shape.name, best_count)
                self.remembered.add(shape.name)
            self.timed[shape.name], self.best_threads[shape.name] = best, best_count
        return self.timed[shape.name]
