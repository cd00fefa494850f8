"""The loops charnn is measured against in `charnn bench`, and how the two are timed in turns.

- `ReferenceLoop`: pytorch/examples word_language_model's training loop (nn.LSTM, dropout,
  `repackage_hidden`, Adam, clipping, `loss.item()` every step).
- `naive_sampler`: nn.LSTM on a length-1 input, softmax, multinomial and `.item()` every step.
- `Alternating`: times two loops that take turns, so that both see the same machine.
"""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch
import torch.nn as nn

from ..model.network import CharRNN

VOCAB_SIZE = 65  # Tiny Shakespeare's


class Alternating:
    """Times two loops that take turns, one unit of work each (a training step, or a chunk of sampling
    steps), so both see the same machine: on a shared machine, speed drifts by 10-20% over a minute,
    and two loops timed one after the other would compare two different machines. Rates use the
    median unit after a warm-up."""

    def __init__(self, seconds: float, warmup: int = 3, min_units: int = 8):
        self.seconds, self.warmup, self.min_units = seconds, warmup, min_units
        self.durations: tuple[list[float], list[float]] = ([], [])
        self.units = 0
        self.started = time.perf_counter()

    def record(self, ours: float, theirs: float) -> bool:
        """Add one unit of each; True once enough have been timed."""
        self.units += 1
        if self.units > self.warmup:
            self.durations[0].append(ours)
            self.durations[1].append(theirs)
        timed = len(self.durations[0])
        return timed >= self.min_units and time.perf_counter() - self.started >= self.seconds

    def rates(self, work_per_unit: float) -> tuple[float, float]:
        return tuple(work_per_unit / float(np.median(d)) for d in self.durations)


class ReferenceModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel, for an LSTM."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout if nlayers > 1 else 0.0)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden


def _repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(_repackage_hidden(v) for v in h)


class ReferenceLoop:
    """The word_language_model training loop: batchify, get_batch, repackage_hidden, a model with
    nn.LSTM and dropout 0.1, Adam, gradient clipping, and loss.item() every step."""

    def __init__(self, case, tokens: np.ndarray, device: str):
        """`case`: layers, hidden, batch and seq_len (a `charnn.bench.benchmark.TrainCase`)."""
        self.case, self.device = case, torch.device(device)
        self.model = ReferenceModel(VOCAB_SIZE, case.hidden, case.hidden, case.layers, 0.1).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        self.criterion = nn.CrossEntropyLoss()
        data = torch.from_numpy(tokens.astype(np.int64))
        nbatch = data.size(0) // case.batch
        self.data = data[: nbatch * case.batch].view(case.batch, -1).t().contiguous().to(self.device)  # batchify
        weight = next(self.model.parameters())
        self.hidden = (weight.new_zeros(case.layers, case.batch, case.hidden),
                       weight.new_zeros(case.layers, case.batch, case.hidden))
        self.position, self.total_loss = 0, 0.0
        self.model.train()

    def step(self) -> None:
        case, data = self.case, self.data
        if self.position + 1 + case.seq_len >= data.size(0):
            self.position = 0
        i = self.position
        inputs, targets = data[i : i + case.seq_len], data[i + 1 : i + 1 + case.seq_len].reshape(-1)  # get_batch
        self.position += case.seq_len
        self.model.zero_grad()
        self.hidden = _repackage_hidden(self.hidden)
        output, self.hidden = self.model(inputs, self.hidden)
        loss = self.criterion(output.view(-1, VOCAB_SIZE), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.optimizer.step()
        self.total_loss += loss.item()


def naive_sampler(model: CharRNN, streams: int) -> Iterator[None]:
    """nn.LSTM on a length-1 input, softmax, multinomial and .item() (or .tolist()) every step."""
    device = model.head.weight.device
    generator = torch.Generator(device=device)
    generator.manual_seed(0)
    ids = torch.zeros(1, streams, dtype=torch.long, device=device)
    hidden = None
    while True:
        with torch.inference_mode():
            logits, hidden = model(ids, hidden)
            probs = torch.softmax(logits[0] / 0.8, dim=-1)
            ids = torch.multinomial(probs, 1, generator=generator).view(1, streams)
        ids.item() if streams == 1 else ids.tolist()
        yield
