"""The model: embedding -> stacked LSTM/GRU/RNN -> dropout -> linear to the vocabulary.

Tensors are time-major, like nn.LSTM's default: token ids (T, B), logits (T, B, V).
The hidden state is a (h, c) tuple for an LSTM and a single tensor for a GRU or
RNN, each (num_layers, B, hidden_size).
"""

from __future__ import annotations

from typing import Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig

Hidden = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

_RNN_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
_RNN_FUNCTIONS = {"lstm": torch.lstm, "gru": torch.gru, "rnn": torch.rnn_tanh}
_MASK_LEVELS = 1 << 16  # dropout masks compare 16-bit random numbers: keep probability exact to 1/65536


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout. On the CPU the mask comes from 64-bit random words cut into four 16-bit
    numbers, which is about four times cheaper than `F.dropout`'s one Bernoulli draw per element
    (that draw was a tenth of a CPU training step); elsewhere it is `F.dropout`."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return F.dropout(x, p, training=True)
    words = (x.numel() + 3) // 4
    bits = torch.randint(-(2**63), 2**63 - 1, (words,), dtype=torch.int64).view(torch.int16)[: x.numel()]
    threshold = round(p * _MASK_LEVELS) - _MASK_LEVELS // 2  # int16 is uniform on [-32768, 32767]
    keep = (bits >= threshold).view(x.shape)
    return torch.where(keep, x * (1.0 / (1.0 - p)), 0.0)


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
        self.head = nn.Linear(config.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.embedding.weight

    def forward(
        self, idx: torch.Tensor, hidden: Hidden | None = None, resets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, Hidden]:
        """idx (T, B) -> logits (T, B, V) and the final state. `resets` (T, B) marks the steps whose
        incoming state is zeroed first (`charnn.data.batches.reset_mask`): the recurrence restarts there, per stream."""
        p = self.config.dropout
        x = dropout(self.embedding(idx), p, self.training)  # (T, B, E)
        if resets is not None and bool(resets.any()):
            out, hidden = self._recur_with_resets(x, hidden, resets)
        else:
            out, hidden = self._recur(x, hidden)  # (T, B, H)
        logits = self.head(dropout(out, p, self.training))  # (T, B, V)
        return logits, hidden

    def _recur(self, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        if self.training and self.config.dropout > 0 and self._cheaper_by_layer(x):
            return self._layer_by_layer(x, hidden)  # to use the cheaper dropout between layers
        return self.rnn(x, hidden)

    def _recur_with_resets(self, x: torch.Tensor, hidden: Hidden | None, resets: torch.Tensor):
        """The fused kernels cannot zero a state mid-sequence, so cut the window at every step where
        some stream resets: one kernel call per piece, the state zeroed between pieces."""
        if hidden is None:
            hidden = self.init_hidden(x.shape[1], x.device)
        outs = []
        for start, end, restart in reset_segments(resets):
            if restart is not None:
                hidden = reset_streams(hidden, restart)
            out, hidden = self._recur(x[start:end], hidden)
            outs.append(out)
        return torch.cat(outs), hidden

    def _cheaper_by_layer(self, x: torch.Tensor) -> bool:
        """Measured on a 2-core CPU: calling the layers one by one, with our dropout between them, is
        5-7% faster for 2x128 and 2x256 models at 32 streams, even at 8 streams, and about 5% slower for
        3x512 at 64 streams, where the mask costs little next to the matrix products."""
        c = self.config
        return c.num_layers > 1 and c.hidden_size <= 256 and x.device.type == "cpu"

    def _layer_by_layer(self, x: torch.Tensor, hidden: Hidden | None) -> tuple[torch.Tensor, Hidden]:
        """What nn.LSTM/GRU/RNN computes, one layer per call, on the same parameters and kernels."""
        c = self.config
        if hidden is None:
            hidden = self.init_hidden(x.shape[1], x.device)
        finals = []
        for layer in range(c.num_layers):
            if layer > 0:
                x = dropout(x, c.dropout, True)
            x, final = self.run_layer(layer, x, hidden)
            finals.append(final)
        return x, self.join_layer_states(finals)

    def run_layer(self, layer: int, x: torch.Tensor, hidden: Hidden) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One recurrent layer over x (T, B, in), from its slice of `hidden`: the outputs (T, B, H) and
        its final state ([h] or [h, c], each (1, B, H)); the same kernel and parameters nn.LSTM uses."""
        c = self.config
        params = [getattr(self.rnn, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
        if c.cell == "lstm":
            state = (hidden[0][layer : layer + 1], hidden[1][layer : layer + 1])
        else:
            state = hidden[layer : layer + 1]
        # (input, state, params, has_biases, layers, dropout, train, bidirectional, batch_first)
        x, *final = _RNN_FUNCTIONS[c.cell](x, state, params, True, 1, 0.0, self.training, False, False)
        return x, final

    def join_layer_states(self, finals: list[list[torch.Tensor]]) -> Hidden:
        """The per-layer final states of `run_layer` as one hidden state."""
        if self.config.cell == "lstm":
            return torch.cat([f[0] for f in finals]), torch.cat([f[1] for f in finals])
        return torch.cat([f[0] for f in finals])

    def init_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        c = self.config
        device = device if device is not None else self.head.weight.device
        zeros = torch.zeros(c.num_layers, batch_size, c.hidden_size, device=device)
        return (zeros, zeros.clone()) if c.cell == "lstm" else zeros


def reset_segments(resets: torch.Tensor) -> list[tuple[int, int, torch.Tensor | None]]:
    """A window cut where some stream resets (`resets`: (T, B), `charnn.data.batches.reset_mask`): the stretches
    (start, end, mask), where mask (B,) marks the streams whose state is zeroed before `start`
    (None for a stretch that does not start at a reset). The fused kernels cannot zero a state
    half-way, so each stretch is one kernel call."""
    times = torch.nonzero(resets.any(dim=1)).flatten().tolist()
    bounds = sorted({0, *times, resets.shape[0]})
    restarts = set(times)
    return [(start, end, resets[start] if start in restarts else None) for start, end in zip(bounds, bounds[1:])]


def join_streams(first: Hidden, rest: Hidden) -> Hidden:
    """Two hidden states side by side: the streams of `first`, then those of `rest`."""
    if isinstance(first, torch.Tensor):
        return torch.cat([first, rest], dim=1)
    return tuple(torch.cat([a, b], dim=1) for a, b in zip(first, rest))


def reset_streams(hidden: Hidden, mask: torch.Tensor) -> Hidden:
    """Zero the state of the streams where `mask` (B,) is true; the others keep theirs."""
    keep = (~mask).to(hidden[0].dtype if isinstance(hidden, tuple) else hidden.dtype).view(1, -1, 1)
    if isinstance(hidden, torch.Tensor):
        return hidden * keep
    return tuple(h * keep for h in hidden)


def detach_hidden(hidden: Hidden | None) -> Hidden | None:
    """Cut the graph at the window boundary but keep the values: truncated BPTT."""
    if hidden is None:
        return None
    if isinstance(hidden, torch.Tensor):
        return hidden.detach()
    return tuple(h.detach() for h in hidden)


def as_float32(hidden: Hidden | None) -> Hidden | None:
    """The state in float32 (a mixed-precision forward pass returns it in bf16 or fp16)."""
    if hidden is None or isinstance(hidden, torch.Tensor):
        return None if hidden is None else hidden.float()
    return tuple(h.float() for h in hidden)


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
