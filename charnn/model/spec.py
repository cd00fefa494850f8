"""A model's arithmetic, without PyTorch: everything that follows from a `ModelConfig` alone.

The gate table, the weights a model has (PyTorch's `state_dict()` names and shapes, which best.safetensors
stores), its parameter count, the work and memory of a training window or of a batch of samples. The
engine, weights and checkpoint files, the memory checks, the sizing rule and the benchmark ask here.

With V the vocabulary size, E the embedding size, H the hidden size and G = gates x H:

    embedding.weight                 (V, E)
    rnn.weight_ih_l0, weight_hh_l0   (G, E), (G, H)      a later layer K: (G, H), (G, H)
    rnn.bias_ih_lK, bias_hh_lK       (G,), (G,)          every layer K from 0
    head.weight, head.bias           (V, H), (V,)        shared with embedding.weight under tie_weights
"""

from __future__ import annotations

import math

from ..config import ModelConfig

# blocks of hidden_size rows in W_ih and W_hh: an LSTM's i, f, g, o; a GRU's r, z, n; a plain RNN's one
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
FLOAT = 4  # bytes of a float32: weights, states and logits


def gate_rows(config: ModelConfig) -> int:
    """G: the rows of each layer's W_ih and W_hh."""
    return GATES[config.cell] * config.hidden_size


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor a model has, by its PyTorch name, with its shape (the safetensors file's layout)."""
    V, E, H, G = config.vocab_size, config.embed_size, config.hidden_size, gate_rows(config)
    shapes = {"embedding.weight": (V, E)}
    for layer in range(config.num_layers):
        shapes[f"rnn.weight_ih_l{layer}"] = (G, E if layer == 0 else H)
        shapes[f"rnn.weight_hh_l{layer}"] = (G, H)
        shapes[f"rnn.bias_ih_l{layer}"] = (G,)
        shapes[f"rnn.bias_hh_l{layer}"] = (G,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    return shapes


def parameter_count(config: ModelConfig) -> int:
    """The numbers a model trains: every tensor's, a tied output matrix counted once."""
    total = sum(math.prod(shape) for shape in weight_shapes(config).values())
    return total - (config.vocab_size * config.hidden_size if config.tie_weights else 0)


def forward_flops_per_char(config: ModelConfig) -> int:
    """Matrix-multiply FLOPs of one character's forward pass: every layer's two products and the output layer."""
    shapes = weight_shapes(config)
    return 2 * sum(math.prod(shapes[name]) for name in shapes if name.startswith("rnn.weight") or name == "head.weight")


def step_weight_bytes(config: ModelConfig) -> int:
    """The float32 weights one stream's sampling step reads: the first layer's recurrent matrix (its input
    term is a row of a per-character table), each later layer's two matrices, and the output layer."""
    G, H = gate_rows(config), config.hidden_size
    return FLOAT * (G * H + (config.num_layers - 1) * G * 2 * H + H * config.vocab_size)


def training_bytes(config: ModelConfig, streams: int, seq_len: int) -> int:
    """Weights, gradients and AdamW's two moments, and the activations one window keeps for backward."""
    per_char = config.embed_size + config.num_layers * (gate_rows(config) + 2 * config.hidden_size) \
        + 2 * config.vocab_size
    return FLOAT * (4 * parameter_count(config) + streams * seq_len * per_char)


def sampling_bytes(config: ModelConfig, streams: int, length: int) -> int:
    """The weights, and per stream its state, logits and the text it holds back (samples after the
    first are printed once they are finished)."""
    per_stream = FLOAT * (config.num_layers * (gate_rows(config) + 2 * config.hidden_size)
                          + 3 * config.vocab_size) + length
    return FLOAT * parameter_count(config) + streams * per_stream


def beam_bytes(config: ModelConfig, beams: int, length: int) -> int:
    """Beam search: every beam's state and history, and a float64 score for each of beams x vocabulary."""
    return sampling_bytes(config, beams, length) + beams * (8 * config.vocab_size + 8 * length)
