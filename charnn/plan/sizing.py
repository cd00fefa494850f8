"""Choosing a model for the corpus, the budget and the device (`charnn train --size`).

The rule (its constants start from the literature and the measured defaults; scripts/sizing.py's study
checks and tunes them, and the README shows its table):

1. The budget. A limit the user gives (--max-time, --max-steps, --epochs) is the budget. With none,
   the budget is the time the fixed default model (2x256) takes to read the training text
   DEFAULT_EPOCHS times on this device, kept between DEFAULT_BUDGET_RANGE (2 minutes and 1 hour), and
   the run also stops after DEFAULT_PATIENCE evaluations without a new best validation loss.
2. The streams. On a CPU a step costs in proportion to its characters, so the fewest streams that keep
   the kernels busy (8) buy the most updates. Where wider batches come almost free (a GPU), the streams
   double while a doubling still brings STREAM_GAIN times the characters per second, as long as each
   stream keeps MIN_WINDOWS windows per epoch.
3. The model. Each candidate shape reads, in the budget, as many characters as the device's speed
   allows. Text read again is worth less than new text (Muennighoff et al. 2023: repeats decay with
   REPEAT_HALF_LIFE epochs), so the characters count as `effective_chars`. The choice is the largest
   candidate that still gets CHARS_PER_PARAMETER effective characters per parameter: a bigger one
   would be undertrained, a smaller one underfits (Hoffmann et al. 2022, in characters).
4. Dropout follows the epochs the chosen model reads: DROPOUT_BY_EPOCHS.

Every option the user gives is kept: the candidates take its value, and only the rest is chosen.
The module is pure: device speeds come in through a `Speeds` object (measured by charnn.plan.speed, or a
fixed table in tests and in the study).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..config import ModelConfig, TrainConfig
from .shapes import Shape, Speeds, SpeedTable, default_shape

__all__ = ["Budget", "Plan", "Shape", "Situation", "SpeedTable", "Speeds", "choose"]

# --- the rule's constants (checked by scripts/sizing.py's study) ------------------------------------

# Refitted on the study's cells (`python scripts/sizing_fit.py`, the README's table): first on 109 cells,
# 4 characters a parameter where the starting guess was 5 and dropout a step lower with a floor of half a
# step; then on 86 cells scored on pieces spread over the validation text, 7 characters a parameter (at ten
# minutes and an hour 4 chose models too large for corpora of 1 MB and more) and repeats that keep their
# value far longer (a 200 KB file read 30 times in two minutes still wants 2x192 over 2x128).
CHARS_PER_PARAMETER = 7.0
REPEAT_HALF_LIFE = 100.0  # epochs; R* of Muennighoff et al.: the value of repeated text decays over it
# up to so many epochs read: this dropout
DROPOUT_BY_EPOCHS = ((10.0, 0.05), (30.0, 0.1), (100.0, 0.2), (math.inf, 0.3))
DEFAULT_BUDGET_RANGE = (120.0, 3600.0)  # seconds: the budget when no limit is given
DEFAULT_PATIENCE = 4  # evaluations without a new best before a run with the default budget stops
STREAM_GAIN = 1.6  # a doubling of the streams must bring this much more speed to be taken
MIN_WINDOWS = 64  # windows per stream per epoch, at least: so wide batches need a large corpus
MAX_STREAMS = 512
# evaluation scores characters this many times faster than training reads them: 3.4 to 4 on an idle 2-core
# VM, 2.4 at the least (a 24 MB code corpus on one core beside other work, where 3.0 took 6.1% of the time)
EVAL_SPEEDUP = 2.4
# Evaluation, when --eval-every and --eval-chars are not given, takes EVAL_SHARE of the time at most: the
# characters scored each time (the same ones every time) and the interval follow the budget
EVAL_SHARE = 0.05
EVAL_CHARS_RANGE = (100_000, 1_000_000)  # scored per evaluation, the validation text allowing
EVALUATIONS = 20  # aimed for in a run: enough for best.pt and --patience to choose among
MAX_EVALUATIONS = 50
MIN_EVAL_EVERY = 50  # steps

WIDTHS = (64, 96, 128, 192, 256, 320, 384, 512)  # two layers each
DEEP_WIDTHS = (512, 768, 1024, 1536)  # three layers: for budgets and devices that reach them


# fixed shapes for --size NAME; "small" is exactly the configs' defaults, "tiny" what the rule picks for
# two minutes on this CPU, "medium" for about four hours, "large" for a day or a GPU
PRESETS: dict[str, dict] = {
    "tiny": {"num_layers": 2, "hidden_size": 128},
    "small": {},
    "medium": {"num_layers": 2, "hidden_size": 512, "dropout": 0.2},
    "large": {"num_layers": 3, "hidden_size": 768, "dropout": 0.2},
}
MODEL_OPTIONS = ("cell", "num_layers", "hidden_size", "embed_size", "dropout")
TRAIN_OPTIONS = ("batch_size", "seq_len", "lr")


# --- the budget and the situation ---------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The limits the user gave; none of them: the default budget applies."""

    seconds: float | None = None
    steps: int | None = None
    epochs: float | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.seconds, self.steps, self.epochs))


@dataclass(frozen=True)
class Situation:
    """What the choice depends on: the corpus, the budget, the options the user gave."""

    train_chars: int
    vocab_size: int
    budget: Budget = field(default_factory=Budget)
    model: dict = field(default_factory=dict)  # ModelConfig fields the user gave
    train: dict = field(default_factory=dict)  # TrainConfig fields the user gave
    val_chars: int = 0  # for the evaluation's share of a time budget
    streams_multiple: int = 1  # processes the streams are split between
    spent: float = 0.0  # seconds of the budget already used (a run planned again after its first minute)

    def given(self, name: str):
        return self.model.get(name, self.train.get(name))


@dataclass(frozen=True)
class Plan:
    """The chosen options (only those the user did not give), and what the run will do with them."""

    size: str  # auto or a preset name
    model: dict  # ModelConfig fields chosen
    train: dict  # TrainConfig fields chosen (with the default budget: max_steps and patience too)
    shape: Shape
    parameters: int
    steps: int
    chars: int
    epochs: float
    seconds: float | None  # expected training time (None: a step or epoch budget, the device not timed)
    budget: str  # what limits the run, in words
    reason: str
    chars_per_sec: float | None = None  # the training speed the plan expects (None: not timed)
    timings: dict = field(default_factory=dict)  # what was timed: shape -> chars/s and threads
    replanned: dict | None = None  # a run that saw another speed than planned: when, and the first plan
    precision: dict | None = None  # the precision chosen, and why (charnn.plan.planning)

    def describe(self) -> str:
        """'2x512 LSTM, 32 streams x 128: 6.3M params for 48M characters in ~1h'."""
        s = self.shape
        when = f" in ~{_duration(self.seconds)}" if self.seconds is not None else ""
        return (f"{s.num_layers}x{s.hidden_size} {s.cell.upper()}, {s.batch_size} streams x {s.seq_len}: "
                f"{_count(self.parameters)} params for {_count(self.chars)} characters{when}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = self.shape.name
        data["summary"] = self.describe()
        return data


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}".replace(".0" + unit, unit)
    return f"{n:.0f}"


def _duration(seconds: float) -> str:
    if seconds >= 3570:
        return f"{seconds / 3600:.1f}h".replace(".0h", "h")
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f}s"


# --- the rule ----------------------------------------------------------------------------------


def effective_chars(chars: float, corpus_chars: float) -> float:
    """Characters read, with text read again counting for less: the first epoch in full, the repeats
    decaying over REPEAT_HALF_LIFE epochs, so a small corpus saturates at (1 + R*) times its size."""
    if corpus_chars <= 0 or chars <= corpus_chars:
        return float(chars)
    repeats = chars / corpus_chars - 1
    return corpus_chars * (1 + REPEAT_HALF_LIFE * (1 - math.exp(-repeats / REPEAT_HALF_LIFE)))


def dropout_for(epochs: float) -> float:
    """More dropout the more often the model reads the same text."""
    return next(p for limit, p in DROPOUT_BY_EPOCHS if epochs <= limit)


def choose_streams(situation: Situation, speeds: Speeds | None) -> int:
    """The streams: the user's; on a CPU the default; elsewhere doubled while it nearly doubles the speed."""
    given = situation.given("batch_size")
    if given is not None:
        return given
    streams = _round_up(TrainConfig.batch_size, situation.streams_multiple)
    if speeds is None or speeds.device_type == "cpu":
        return streams
    probe = _base_shape(situation, streams)
    while streams * 2 <= MAX_STREAMS and situation.train_chars >= 2 * streams * probe.seq_len * MIN_WINDOWS:
        wider = replace(probe, batch_size=streams * 2)
        if speeds.chars_per_sec(wider) < STREAM_GAIN * speeds.chars_per_sec(probe):
            break
        streams, probe = streams * 2, wider
    return streams


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _base_shape(situation: Situation, streams: int) -> Shape:
    """The fixed default's shape with the user's options and these streams."""
    base = default_shape()
    return _with_given(Shape(base.num_layers, base.hidden_size, streams, base.seq_len, base.cell), situation)


def _with_given(shape: Shape, situation: Situation) -> Shape:
    changes = {name: situation.given(name) for name in ("num_layers", "hidden_size", "embed_size", "cell", "seq_len")
               if situation.given(name) is not None}
    return replace(shape, **changes)


def candidates(situation: Situation, streams: int) -> list[Shape]:
    """The shapes the rule chooses from, smallest first, each with the user's options applied."""
    seq_len = TrainConfig.seq_len
    pairs = [(2, w) for w in WIDTHS] + [(3, w) for w in DEEP_WIDTHS]
    shapes = {_with_given(Shape(layers, width, streams, seq_len), situation) for layers, width in pairs}
    return sorted(shapes, key=lambda s: (s.parameters(situation.vocab_size), s.name))


def step_seconds(shape: Shape, situation: Situation, speeds: Speeds) -> float:
    """Seconds per training step, evaluations included (they count against a time budget too): their
    share, or what the --eval-every and --eval-chars the user gave cost."""
    speed = speeds.chars_per_sec(shape)
    if "eval_every" not in situation.train or "eval_chars" not in situation.train:
        return shape.chars_per_step / speed / (1 - EVAL_SHARE)
    every, limit = situation.train["eval_every"], situation.train["eval_chars"]
    scored = situation.val_chars if limit is None else min(situation.val_chars, limit)
    return shape.chars_per_step / speed + scored / (every * EVAL_SPEEDUP * speed)


def evaluation_plan(shape: Shape, steps: int, situation: Situation) -> dict:
    """--eval-every and --eval-chars, those the user did not give, so that evaluation takes EVAL_SHARE of
    the run's time at most. Evaluation scores EVAL_SPEEDUP times as fast as training reads, so what it
    may score is a fixed share of the characters trained, whatever the device: the plan depends on the
    steps alone, and a step budget stays reproducible."""
    given_every, given_chars = situation.train.get("eval_every"), situation.train.get("eval_chars", ())
    if given_every is not None and given_chars != ():
        return {}
    scorable = EVAL_SHARE / (1 - EVAL_SHARE) * EVAL_SPEEDUP * steps * shape.chars_per_step
    val = max(situation.val_chars, 2)  # a corpus too small to split is refused later, in words
    low, high = min(EVAL_CHARS_RANGE[0], val), min(EVAL_CHARS_RANGE[1], val)
    if given_every is not None:
        evaluations = steps // given_every + 1  # and once at the end
        return {"eval_chars": int(min(high, max(low, scorable / evaluations)))}
    chars = val if given_chars is None else given_chars  # None: all of it, as --eval-chars 0 asks
    if given_chars == ():
        chars = int(min(high, max(low, scorable / EVALUATIONS)))
    # the intervals, and one more evaluation at the end: every interval's end and the end fit in the share
    evaluations = max(1, min(MAX_EVALUATIONS, int(scorable // max(min(chars, val), 1)) - 1))
    every = max(MIN_EVAL_EVERY, math.ceil(steps / evaluations))
    return {"eval_every": every} if given_chars != () else {"eval_every": every, "eval_chars": chars}


def default_budget(situation: Situation, speeds: Speeds, streams: int) -> float:
    """Seconds for the fixed default model to read the training text DEFAULT_EPOCHS times, kept in range."""
    shape = replace(default_shape(), batch_size=streams)
    windows = TrainConfig.DEFAULT_EPOCHS * situation.train_chars / shape.chars_per_step
    low, high = DEFAULT_BUDGET_RANGE
    return min(high, max(low, windows * step_seconds(shape, situation, speeds)))


def steps_in_budget(shape: Shape, situation: Situation, seconds: float | None, speeds: Speeds | None) -> int:
    """The optimiser steps this shape takes before the first limit: time, steps or epochs."""
    budget, limits = situation.budget, []
    if budget.steps is not None:
        limits.append(budget.steps)
    if budget.epochs is not None:
        limits.append(math.ceil(budget.epochs * situation.train_chars / shape.chars_per_step))
    if seconds is not None and speeds is not None:
        limits.append(int(seconds / step_seconds(shape, situation, speeds)))
    return max(1, min(limits))


@dataclass(frozen=True)
class ScaledSpeeds:
    """Another device's speeds, all scaled by `factor`: what a run saw, against what it planned with."""

    speeds: Speeds
    factor: float

    @property
    def device_type(self) -> str:
        return self.speeds.device_type

    def chars_per_sec(self, shape: Shape) -> float:
        return self.speeds.chars_per_sec(shape) * self.factor


def decisive_shapes(plan: Plan, situation: Situation) -> list[Shape]:
    """The shapes a plan's choice turns on, whose speeds are worth timing: the chosen one and, for auto,
    the next larger candidate, which did not fit."""
    if plan.size != "auto":
        return [plan.shape]
    shapes = candidates(situation, plan.shape.batch_size)
    larger = shapes[shapes.index(plan.shape) + 1:] if plan.shape in shapes else []
    return [plan.shape, *larger[:1]]


def fits(shape: Shape, steps: int, situation: Situation) -> bool:
    """Enough (effective) characters for every parameter: the model will not be left undertrained."""
    read = effective_chars(steps * shape.chars_per_step, situation.train_chars)
    return read >= CHARS_PER_PARAMETER * shape.parameters(situation.vocab_size)


def choose(situation: Situation, speeds: Speeds | None = None, size: str = "auto") -> Plan:
    """The plan for a run: the options the user did not give, chosen (or a preset's), and the budget."""
    if size != "auto":
        return _preset_plan(situation, speeds, size)
    streams = choose_streams(situation, speeds)
    seconds = _budget_seconds(situation, speeds, streams)
    chosen, smallest = None, None
    for shape in candidates(situation, streams):  # smallest first
        steps = steps_in_budget(shape, situation, seconds, speeds)
        smallest = smallest or (shape, steps)
        if not fits(shape, steps, situation):
            break  # a larger shape reads fewer characters for more parameters: it cannot fit either
        chosen = (shape, steps)
    why = f"the largest model that reads {CHARS_PER_PARAMETER:g}+ characters per parameter"
    if chosen is None:
        chosen, why = smallest, "the smallest candidate: the budget is short for any"
    return _plan("auto", *chosen, situation, speeds if seconds is not None else None, why)


def _budget_seconds(situation: Situation, speeds: Speeds | None, streams: int) -> float | None:
    """The seconds the plan is for: the time budget, or the default budget; less what is spent."""
    if situation.budget.seconds is not None or situation.budget.given:
        seconds = situation.budget.seconds
    elif speeds is None:
        raise ValueError("with no limit given, the default budget needs the device's speed")
    else:
        seconds = default_budget(situation, speeds, streams)
    return None if seconds is None else max(seconds - situation.spent, 1.0)


def _preset_plan(situation: Situation, speeds: Speeds | None, size: str) -> Plan:
    preset = PRESETS[size]
    t = TrainConfig()
    streams = situation.given("batch_size") or _round_up(t.batch_size, situation.streams_multiple)
    base = replace(default_shape(), batch_size=streams, **{k: v for k, v in preset.items() if k != "dropout"})
    shape = _with_given(base, situation)
    seconds = _budget_seconds(situation, speeds, streams)
    steps = steps_in_budget(shape, situation, seconds, speeds)
    dropout = situation.given("dropout")
    dropout = dropout if dropout is not None else preset.get("dropout", ModelConfig.dropout)
    timed = speeds if seconds is not None else None
    return _plan(size, shape, steps, situation, timed, f"--size {size}: a fixed shape", dropout)


def _plan(size: str, shape: Shape, steps: int, situation: Situation, speeds: Speeds | None, why: str,
          dropout: float | None = None) -> Plan:
    chars = steps * shape.chars_per_step
    epochs = chars / max(situation.train_chars, 1)
    if dropout is None:
        given = situation.given("dropout")
        dropout = given if given is not None else dropout_for(epochs)
    model = {"num_layers": shape.num_layers, "hidden_size": shape.hidden_size, "embed_size": shape.embed,
             "dropout": dropout}
    train = {"batch_size": shape.batch_size, "seq_len": shape.seq_len, "lr": situation.given("lr") or TrainConfig.lr,
             **evaluation_plan(shape, steps, situation)}
    budget = _budget_words(situation, steps)
    if not situation.budget.given:
        train["max_steps"] = steps
        if situation.train.get("patience") is None:
            train["patience"] = DEFAULT_PATIENCE
    seconds = expected_seconds(shape, steps, situation, speeds) if speeds is not None else None
    speed = speeds.chars_per_sec(shape) if speeds is not None else None
    reason = (f"{why}, for {_count(situation.train_chars)} training characters and {budget}; "
              f"dropout {dropout:g} for {epochs:.1f} epochs")
    return Plan(size=size, model={k: v for k, v in model.items() if k not in situation.model},
                train={k: v for k, v in train.items() if k not in situation.train}, shape=shape,
                parameters=shape.parameters(situation.vocab_size), steps=steps, chars=chars, epochs=epochs,
                seconds=seconds, budget=budget, reason=reason, chars_per_sec=speed)


def expected_seconds(shape: Shape, steps: int, situation: Situation, speeds: Speeds) -> float:
    """How long `steps` steps of `shape` take on this device, evaluations included."""
    return steps * step_seconds(shape, situation, speeds)


def _budget_words(situation: Situation, steps: int) -> str:
    b = situation.budget
    parts = ([f"--max-time {_duration(b.seconds)}"] if b.seconds is not None else []) + \
            ([f"--max-steps {b.steps:,}"] if b.steps is not None else []) + \
            ([f"--epochs {b.epochs:g}"] if b.epochs is not None else [])
    if parts:
        return " and ".join(parts)
    return f"the default budget ({steps:,} steps, stopping early after {DEFAULT_PATIENCE} evaluations without a new best)"
