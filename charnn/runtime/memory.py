"""How much memory a model, a training step or a batch of samples needs, checked before allocating it.

PyTorch asked for more memory than the machine has either fails deep inside a kernel or, on a CPU,
makes the machine swap for minutes; and a size too large for 64 bits aborts in C++. So the sizes
are estimated here, in Python integers, and a request that cannot fit is refused with one line that
says which options to reduce. The estimates count what dominates (weights, optimiser state, the
activations backward keeps, per-stream state) and err on the low side: they refuse only what is
sure not to fit.
"""

from __future__ import annotations

import os

from ..config import ModelConfig
from ..errors import CharnnError

FLOAT = 4  # bytes: fp32
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
TRAIN_HINT = "reduce --batch-size, --seq-len, --hidden-size or --layers, or train on another --device"
SAMPLE_HINT = "reduce --num-samples, --beam, --length or the model, or sample on another --device"


def parameter_count(config: ModelConfig) -> int:
    """Weights of a CharRNN of this configuration (tied matrices counted once)."""
    gates, hidden = GATES.get(config.cell, 4) * config.hidden_size, config.hidden_size
    recurrent = sum(gates * ((config.embed_size if layer == 0 else hidden) + hidden + 2)
                    for layer in range(config.num_layers))
    embedding, head = config.vocab_size * config.embed_size, hidden * config.vocab_size + config.vocab_size
    return embedding + recurrent + head - (config.vocab_size * hidden if config.tie_weights else 0)


def training_bytes(config: ModelConfig, streams: int, seq_len: int) -> int:
    """Weights, gradients and AdamW's two moments, and the activations one window keeps for backward."""
    gates = GATES.get(config.cell, 4) * config.hidden_size
    per_char = config.embed_size + config.num_layers * (gates + 2 * config.hidden_size) + 2 * config.vocab_size
    return FLOAT * (4 * parameter_count(config) + streams * seq_len * per_char)


def sampling_bytes(config: ModelConfig, streams: int, length: int) -> int:
    """The weights, and per stream its state, logits and the text it holds back (samples after the
    first are printed once they are finished)."""
    gates = GATES.get(config.cell, 4) * config.hidden_size
    per_stream = FLOAT * (config.num_layers * (gates + 2 * config.hidden_size) + 3 * config.vocab_size) + length
    return FLOAT * parameter_count(config) + streams * per_stream


def beam_bytes(config: ModelConfig, beams: int, length: int) -> int:
    """Beam search: every beam's state and history, and a float64 score for each of beams x vocabulary."""
    return sampling_bytes(config, beams, length) + beams * (8 * config.vocab_size + 8 * length)


def available_bytes(device: str = "cpu") -> int | None:
    """Memory free for new allocations on `device` (None where it cannot be told)."""
    if device.startswith("cuda"):
        import torch  # noqa: PLC0415 (only a GPU needs it)

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")  # all of it: the best we can say
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(n: int) -> str:
    if n >= 1e15:
        return "more than 1,000 TB"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n / 1e3:,.1f} kB"


def require_memory(need: int, what: str, device: str, hint: str) -> None:
    """Refuse `what` if it needs more than `device` has free."""
    available = available_bytes(device)
    if available is not None and need > available:
        raise CharnnError(f"out of memory ({what} needs about {human_bytes(need)}; {human_bytes(available)} is free "
                          f"on {device})", hint=hint)
