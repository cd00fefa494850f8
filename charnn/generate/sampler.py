"""What steps the model for the one sampler, chosen once; and sampling from a `CharRNN`, as a library.

Drawing is `Streams`' (charnn.generate.streams), whatever steps the model: the numpy engine on the CPU
(without PyTorch: from a run's best.safetensors, or a copy of a torch model's weights), PyTorch's stepper
on a GPU (`TorchSteps`, which hands its logits to the host each step). `steps_for` makes that choice for
a torch model, `open_sampling_model` for a model on disk: nowhere else is the device looked at.

`generate`, `TextGenerator` and `beam_search` take a `CharRNN`; `TorchGenerator` samples through PyTorch's
stepper wherever the model is (on the CPU too: the reference the tests hold the engine to).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np

from ..data.vocab import Vocab
from ..model.engine import Engine
from ..model.weights import is_weights_file, read_weights
from ..runs.locate import weights_for
from ..runtime.threads import ThreadChoice
from .beam import beam_search as search_beams
from .settings import SampleRequest, SamplingConfig
from .streams import Steps, Streams, alike, default_prime, require_prime

if TYPE_CHECKING:  # PyTorch: only for a torch model
    from ..model.network import CharRNN


def steps_for(model: CharRNN, threads: ThreadChoice | None = None) -> Steps:
    """What steps a torch model where it is: the numpy engine on the CPU (a copy of its weights as they
    are now: training may go on changing them), PyTorch's stepper elsewhere."""
    from ..model.stepper import TorchSteps, engine_from_model  # noqa: PLC0415 (a torch model: PyTorch is loaded)

    if model.head.weight.device.type == "cpu":
        return engine_from_model(model.eval(), threads)
    return TorchSteps(model)


@dataclass(frozen=True)
class SamplingModel:
    """A model ready to sample, with the file it came from."""

    path: Path  # best.safetensors, another .safetensors file, or a checkpoint
    model: Steps  # the numpy `Engine` on the CPU, `TorchSteps` elsewhere
    vocab: Vocab
    note: str | None = None  # something people should know about the choice of file
    records: dict | None = None  # what the file says of its training: step, val_loss (charnn.model.weights)


def open_sampling_model(path: str | os.PathLike | None = None, device: str = SampleRequest.device,
                        threads: ThreadChoice | None = None) -> SamplingModel:
    """The model of a run directory (default: the newest run), checkpoint or safetensors file, to
    sample on `device`: on the CPU, the numpy engine, read without PyTorch from a .safetensors file, its
    BLAS threads chosen as `threads` says (default: charnn.runtime.threads' choice from the environment)."""
    if device != "cpu":
        from ..runtime.device import resolve_device  # noqa: PLC0415 (PyTorch: only off the CPU, or to resolve auto)

        device = str(resolve_device(device))
    source, note = weights_for(path)
    if device == "cpu" and is_weights_file(source):
        weights = read_weights(source)
        return SamplingModel(source, Engine(weights.config, weights.arrays, threads), weights.vocab, note,
                             weights.records)
    from ..runs.locate import open_model  # noqa: PLC0415 (a checkpoint, or a GPU: PyTorch)

    loaded = open_model(source, device)
    records = {key: loaded.payload.get(key) for key in ("step", "val_loss")}
    return SamplingModel(loaded.path, steps_for(loaded.model, threads), loaded.vocab, note, records)


class TextGenerator(Streams):
    """`Streams` of a `CharRNN`: `num_samples` streams alike, stepped where the model is (`steps_for`). Feed
    it text, draw continuations; the state carries over between calls, and `reset` forgets it. Sampled ids
    come out as int64 numpy arrays on the host, where every reader of them (decoding, printing) needs them."""

    def __init__(self, model: CharRNN, config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
                 seed: int | None = None):
        super().__init__(steps_for(model), *alike(config, num_samples, seed, model.config.vocab_size))


class TorchGenerator(Streams):
    """`TextGenerator` through PyTorch's stepper wherever the model is, the CPU included."""

    def __init__(self, model: CharRNN, config: SamplingConfig = SamplingConfig(), num_samples: int = 1,
                 seed: int | None = None):
        from ..model.stepper import TorchSteps  # noqa: PLC0415

        super().__init__(TorchSteps(model), *alike(config, num_samples, seed, model.config.vocab_size))


def generate(
    model: CharRNN,
    prime: Sequence[int] | np.ndarray,
    length: int,
    config: SamplingConfig = SamplingConfig(),
    num_samples: int = 1,
    seed: int | None = None,
) -> Iterator[np.ndarray]:
    """Yield `length` steps of (num_samples,) character ids (int64 numpy arrays) that follow `prime`.

    The prime (at least one id) is read first; then every sampled id is fed back in to produce the next.
    """
    require_prime(prime)
    generator = TextGenerator(model, config, num_samples=num_samples, seed=seed)
    generator.feed(prime)
    yield from generator.sample(length)


def beam_search(model: CharRNN, prime: Sequence[int] | np.ndarray, length: int, beams: int = 8,
                repetition_penalty: float = 1.0, repetition_window: int | None = 64) -> Iterator[int]:
    """The most likely `length` characters after `prime` that a beam of `beams` finds, as ids
    (`charnn.generate.beam`, which says how), stepped where the model is."""
    return search_beams(steps_for(model), prime, length, beams, repetition_penalty, repetition_window)


def preview_text(model: CharRNN, vocab: Vocab, length: int, seed: int) -> str:
    """A short sample from the default prime, for watching a model learn. Its random numbers come from
    a generator of its own, so a training run that previews stays what it was; the model is put back
    in training mode afterwards."""
    prime = default_prime(vocab, model.config.reset_ids)
    try:
        steps = list(generate(model, prime, length, seed=seed))
    finally:
        model.train()
    return vocab.decode(np.concatenate(steps))
