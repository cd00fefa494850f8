"""Model shapes and how fast a device trains them: the vocabulary of charnn.plan.sizing.

A `Shape` is what decides a training step's cost; a `Speeds` object says how many characters a second a
device trains each shape at: `SpeedTable` from a table (the study's measurements, or a fake device in
tests), `charnn.plan.speed.MeasuredSpeeds` by timing this device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ..config import ModelConfig, TrainConfig
from ..model.spec import parameter_count


@dataclass(frozen=True)
class Shape:
    """What decides a step's cost: the model's layers and width, and the characters in one step."""

    num_layers: int
    hidden_size: int
    batch_size: int
    seq_len: int
    cell: str = "lstm"
    embed_size: int | None = None  # None: the hidden size

    @classmethod
    def of(cls, model: ModelConfig, train: TrainConfig) -> Shape:
        """The shape of a run's configurations."""
        embed = None if model.embed_size == model.hidden_size else model.embed_size
        return cls(model.num_layers, model.hidden_size, train.batch_size, train.seq_len, model.cell, embed)

    @property
    def embed(self) -> int:
        return self.embed_size or self.hidden_size

    @property
    def name(self) -> str:
        embed = "" if self.embed == self.hidden_size else f" e{self.embed}"
        return f"{self.num_layers}x{self.hidden_size}{embed} b{self.batch_size} s{self.seq_len}"

    @property
    def chars_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self, vocab_size: int, dropout: float = 0.0) -> ModelConfig:
        return ModelConfig(vocab_size=vocab_size, cell=self.cell, num_layers=self.num_layers,
                           hidden_size=self.hidden_size, embed_size=self.embed_size, dropout=dropout)

    def parameters(self, vocab_size: int) -> int:
        """The parameter count of the model of this shape."""
        return parameter_count(self.model_config(vocab_size))


def default_shape() -> Shape:
    """Today's fixed default (`--size small`), read from the configs that own it."""
    m, t = ModelConfig(vocab_size=1), TrainConfig()
    return Shape(m.num_layers, m.hidden_size, t.batch_size, t.seq_len, m.cell)


class Speeds(Protocol):
    """How fast a device trains each shape."""

    device_type: str  # "cpu", "cuda", "mps"

    def chars_per_sec(self, shape: Shape) -> float: ...


# characters a second on our 2-core CI machine, idle, 2 threads (scripts/sizing.py speeds; the records are
# in scripts/sizing-results.jsonl): the CPU's relative speeds, scaled by one timing on the machine at hand
CPU_SPEEDS = {"2x128 b8 s128": 39435.0, "2x256 b8 s128": 15474.0, "2x384 b8 s128": 7271.0,
              "2x512 b8 s128": 3957.0, "3x512 b8 s128": 2530.0}
CPU_REFERENCE = "2x256 b8 s128"


@dataclass
class SpeedTable:
    """Speeds from a table (shape name -> chars/s), scaled by `factor`: the study's measurements, or a
    fake device in tests. A shape missing from the table is interpolated: the time per character is
    taken as linear in the parameters between the two known shapes nearest in streams and size (a fixed
    overhead plus a cost per parameter, which fits the CPU's measurements to within 10%)."""

    table: dict[str, float]
    device_type: str = "cpu"
    factor: float = 1.0

    def chars_per_sec(self, shape: Shape) -> float:
        if shape.name in self.table:
            return self.table[shape.name] * self.factor
        size = _size(shape)
        known = sorted((abs(math.log(parse_shape(n).batch_size / shape.batch_size)),
                        abs(math.log(_size(parse_shape(n)) / size)), n) for n in self.table)
        points = [(_size(parse_shape(n)), 1.0 / self.table[n]) for _, _, n in known[:2]]
        if len(points) < 2 or points[0][0] == points[1][0]:
            return self.table[known[0][2]] * self.factor * points[0][0] / size
        (x0, y0), (x1, y1) = points
        per_char = y0 + (y1 - y0) * (size - x0) / (x1 - x0)
        floor = min(y0, y1) * min(1.0, size / min(x0, x1))  # never faster than proportional below the table
        return self.factor / max(per_char, floor)


def _size(shape: Shape) -> float:
    return float(shape.parameters(96))


def parse_shape(name: str) -> Shape:
    """'2x256 b8 s128' (as Shape.name writes it) -> Shape."""
    parts = name.split()
    layers, hidden = (int(x) for x in parts[0].split("x"))
    fields = {p[0]: int(p[1:]) for p in parts[1:]}
    return Shape(layers, hidden, fields.get("b", 8), fields.get("s", 128), embed_size=fields.get("e"))
