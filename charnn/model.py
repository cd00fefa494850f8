"""The model: embedding -> stacked LSTM/GRU/RNN -> dropout -> linear to the vocabulary.

Tensors are time-major, like nn.LSTM's default: token ids (T, B), logits (T, B, V).
The hidden state is a (h, c) tuple for an LSTM and a single tensor for a GRU or
RNN, each (num_layers, B, hidden_size).
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn

from .config import ModelConfig

Hidden = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

_RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CharRNN(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embedding = nn.Embedding(config.vocab_size, config.embed_size)
        self.rnn = _RNN_CLASSES[config.cell](
            config.embed_size,
            config.hidden_size,
            config.num_layers,
            dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def forward(self, idx: torch.Tensor, hidden: Hidden | None = None) -> tuple[torch.Tensor, Hidden]:
        x = self.drop(self.embedding(idx))  # (T, B, E)
        out, hidden = self.rnn(x, hidden)  # (T, B, H)
        logits = self.head(self.drop(out))  # (T, B, V)
        return logits, hidden

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        c = self.config
        device = device if device is not None else self.head.weight.device
        zeros = torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device)
        return (zeros, zeros.clone()) if c.cell == "lstm" else zeros

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    """Cut the graph at the window boundary but keep the values: truncated BPTT."""
    if hidden is None:
        return None
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return tuple(h.detach() for h in hidden)


def hidden_to_list(hidden: Hidden | None) -> list[torch.Tensor]:
    """A plain list of tensors, for checkpoints."""
    if hidden is None:
        return []
    if isinstance(hidden, torch.Tensor):
        return [hidden.detach().cpu()]
    return [h.detach().cpu() for h in hidden]


def hidden_from_list(tensors: list[torch.Tensor], cell: str, device: torch.device | str) -> Hidden | None:
    if not tensors:
        return None
    tensors = [t.to(device) for t in tensors]
    return (tensors[0], tensors[1]) if cell == "lstm" else tensors[0]


def select_streams(hidden: Hidden, index) -> Hidden:
    """The hidden state of some streams (batch columns) only."""
    if isinstance(hidden, torch.Tensor):
        return hidden[:, index].contiguous()
    return tuple(h[:, index].contiguous() for h in hidden)
