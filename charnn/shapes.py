"""Model shapes and how fast a device trains them: the vocabulary of charnn.sizing.

A `Shape` is what decides a training step's cost; a `Speeds` object says how many characters a second a
device trains each shape at: `SpeedTable` from a table (the study's measurements, or a fake device in
tests), `charnn.speed.MeasuredSpeeds` by timing this device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from .config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class Shape:
    """What decides a step's cost: the model's layers and width, and the characters in one step."""

    num_layers: int
    hidden_size: int
    batch_size: int
    seq_len: int
    cell: str = "lstm"
    embed_size: int | None = None  # None: the hidden size

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
        """The model's parameter count (as CharRNN.num_parameters() gives it)."""
        gates = {"lstm": 4, "gru": 3, "rnn": 1}[self.cell] * self.hidden_size
        rnn = sum(gates * ((self.embed if layer == 0 else self.hidden_size) + self.hidden_size) + 2 * gates
                  for layer in range(self.num_layers))
        return vocab_size * self.embed + rnn + (self.hidden_size + 1) * vocab_size


def default_shape() -> Shape:
    """Today's fixed default (`--size small`), read from the configs that own it."""
    m, t = ModelConfig(vocab_size=1), TrainConfig()
    return Shape(m.num_layers, m.hidden_size, t.batch_size, t.seq_len, m.cell)


class Speeds(Protocol):
    """How fast a device trains each shape."""

    device_type: str  # "cpu", "cuda", "mps"

    def chars_per_sec(self, shape: Shape) -> float: ...


@dataclass
class SpeedTable:
    """Speeds from a table (shape name -> chars/s), scaled by `factor`: the study's measurements, or a
    fake device in tests. Shapes missing from the table are estimated from the nearest one by their
    training FLOPs per character."""

    table: dict[str, float]
    device_type: str = "cpu"
    factor: float = 1.0

    def chars_per_sec(self, shape: Shape) -> float:
        if shape.name in self.table:
            return self.table[shape.name] * self.factor
        flops = _flops_per_char(shape)
        known = [(abs(math.log(_flops_per_char(_parse_shape(n)) / flops)), n) for n in self.table]
        _, nearest = min(known)
        return self.table[nearest] * self.factor * _flops_per_char(_parse_shape(nearest)) / flops


def _flops_per_char(shape: Shape) -> float:
    return float(shape.parameters(96))


def _parse_shape(name: str) -> Shape:
    """'2x256 b8 s128' (as Shape.name writes it) -> Shape."""
    parts = name.split()
    layers, hidden = (int(x) for x in parts[0].split("x"))
    fields = {p[0]: int(p[1:]) for p in parts[1:]}
    return Shape(layers, hidden, fields.get("b", 8), fields.get("s", 128), embed_size=fields.get("e"))
