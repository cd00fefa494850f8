"""Checkpoints: self-contained, safe to load, written atomically.

A checkpoint is a dict of plain Python values and tensors, saved with
torch.save and loaded with torch.load(weights_only=True), which refuses to
unpickle anything else. It carries a format name and version so that a foreign
or newer file is refused with a clear message instead of a traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .archive import FORMAT, FORMAT_VERSION
from .config import ModelConfig
from .errors import CharnnError
from .files import atomic_write
from .model import CharRNN
from .vocab import Vocab


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load and check a checkpoint on the CPU; every failure is a CharnnError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CharnnError(f"{path}: no such checkpoint")
    if path.is_dir():
        raise CharnnError(f"{path}: is a directory, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CharnnError(f"{path}: checkpoint is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for damaged or unsafe files
        reason = "it holds objects that are not plain data; refusing to load them" if "weights_only" in str(
            err) or "Unsupported global" in str(err) else "it is damaged, truncated or not a charnn checkpoint"
        raise CharnnError(f"{path}: cannot load checkpoint: {reason}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharnnError(f"{path}: not a charnn checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise CharnnError(f"{path}: checkpoint has no valid format_version")
    if version > FORMAT_VERSION:
        raise CharnnError(
            f"{path}: checkpoint format version {version} is newer than this charnn supports ({FORMAT_VERSION})",
            hint="upgrade charnn to load it",
        )
    for key in ("model_config", "vocab", "model_state"):
        if key not in payload:
            raise CharnnError(f"{path}: checkpoint is missing {key!r}")
    return payload


def model_from_checkpoint(payload: dict, source: str | os.PathLike = "checkpoint") -> tuple[CharRNN, Vocab]:
    """Rebuild the model (on the CPU, in eval mode) and vocabulary a checkpoint describes."""
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        vocab = Vocab.from_dict(payload["vocab"])
        model = CharRNN(config)
        model.load_state_dict(payload["model_state"])
    except CharnnError as err:
        raise CharnnError(f"{source}: checkpoint has an invalid model config: {err}") from None
    except (TypeError, ValueError, KeyError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CharnnError(f"{source}: checkpoint does not describe a valid model ({first})") from None
    if vocab.size != config.vocab_size:
        raise CharnnError(f"{source}: checkpoint vocabulary ({vocab.size}) does not match the model ({config.vocab_size})")
    model.eval()
    return model, vocab


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample or evaluate, with where it came from."""

    path: Path  # the checkpoint file
    model: CharRNN  # in eval mode, on the device asked for
    vocab: Vocab
    payload: dict  # the whole checkpoint (training config, corpus, step)


def open_model(path: str | os.PathLike | None = None, device: str = "auto") -> LoadedModel:
    """The model of a checkpoint file or run directory (its best.pt, else last.pt; default: the newest run)."""
    from .device import resolve_device  # noqa: PLC0415
    from .rundir import resolve_checkpoint  # noqa: PLC0415

    checkpoint = resolve_checkpoint(path)
    payload = load_checkpoint(checkpoint)
    model, vocab = model_from_checkpoint(payload, checkpoint)
    return LoadedModel(checkpoint, model.to(resolve_device(device)), vocab, payload)


def model_from_weights(weights, device: str = "auto") -> CharRNN:
    """The model of a `charnn.weights.Weights` (a safetensors file), on a device, in eval mode."""
    from .device import resolve_device  # noqa: PLC0415

    model = CharRNN(weights.config)
    model.load_state_dict({name: torch.from_numpy(array) for name, array in weights.arrays.items()})
    return model.to(resolve_device(device)).eval()
