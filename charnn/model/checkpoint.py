"""Checkpoints: self-contained, safe to load, written atomically.

A checkpoint is a dict of plain Python values and tensors, saved with
torch.save and loaded with torch.load(weights_only=True), which refuses to
unpickle anything else. It carries a format name and version so that a foreign
or newer file is refused with a clear message instead of a traceback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from ..config import ModelConfig
from ..data.checked import read_model_config
from ..data.files import TORCH_ARCHIVE_MAGIC, atomic_write
from ..data.vocab import Vocab
from ..errors import CharnnError
from .archive import FORMAT, FORMAT_VERSION
from .network import CharRNN
from .spec import weight_shapes


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
    try:
        with open(path, "rb") as f:
            head = f.read(len(TORCH_ARCHIVE_MAGIC))
    except OSError as err:
        raise CharnnError(f"{path}: cannot read ({err.strerror or err})") from None
    if not head:
        raise CharnnError(f"{path}: checkpoint is empty")
    if head != TORCH_ARCHIVE_MAGIC:
        raise CharnnError(f"{path}: not a checkpoint (charnn checkpoints are torch.save archives; weights files are .safetensors)")
    payload = _torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CharnnError(f"{path}: not a charnn checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
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


def _torch_load(path: Path):
    """torch.load with weights_only=True: anything but tensors and plain data is refused, not run."""
    try:
        with warnings.catch_warnings():  # torch warns about legacy files before refusing them: one line is ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise CharnnError(f"{path}: cannot read ({err.strerror or err})") from None
    except Exception as err:  # torch raises many types for damaged or unsafe files
        text = str(err)
        unsafe = "Unsupported global" in text or "Unsupported operand" in text or "GLOBAL" in text
        reason = ("it holds objects that are not plain data; refusing to load them" if unsafe
                  else "it is damaged or truncated")
        raise CharnnError(f"{path}: cannot load checkpoint: {reason}") from None


def check_weights(state: dict, config: ModelConfig, source) -> None:
    """The tensors are the ones the configuration describes, name for name and shape for shape."""
    if not isinstance(state, dict) or not all(isinstance(t, torch.Tensor) for t in state.values()):
        raise CharnnError(f"{source}: checkpoint's model_state is not a set of tensors")
    expected = weight_shapes(config)
    missing, extra = sorted(expected.keys() - state.keys()), sorted(state.keys() - expected.keys())
    if missing or extra:
        raise CharnnError(f"{source}: checkpoint's weights do not match its model config "
                          f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise CharnnError(f"{source}: checkpoint's weights do not match its model config "
                              f"({name} is {tuple(state[name].shape)}, the config says {shape})")


def model_from_checkpoint(payload: dict, source: str | os.PathLike = "checkpoint") -> tuple[CharRNN, Vocab]:
    """Rebuild the model (on the CPU, in eval mode) and vocabulary a checkpoint describes, after checking
    its configuration against its tensors: nothing is built from a configuration the tensors do not fit."""
    try:
        if not isinstance(payload.get("model_config"), dict) or not isinstance(payload.get("vocab"), dict):
            raise TypeError("model_config and vocab must be mappings")
        config = read_model_config(payload["model_config"])
        vocab = Vocab.from_dict(payload["vocab"])
    except CharnnError as err:
        raise CharnnError(f"{source}: checkpoint has an invalid model config: {err}") from None
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CharnnError(f"{source}: checkpoint does not describe a valid model ({first})") from None
    if vocab.size != config.vocab_size:
        raise CharnnError(f"{source}: checkpoint vocabulary ({vocab.size}) does not match the model ({config.vocab_size})")
    check_weights(payload["model_state"], config, source)
    model = CharRNN(config)
    try:
        model.load_state_dict(payload["model_state"])
    except (RuntimeError, TypeError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CharnnError(f"{source}: checkpoint does not describe a valid model ({first})") from None
    model.eval()
    return model, vocab


def model_from_weights(weights, device: str = "auto") -> CharRNN:
    """The model of a `charnn.model.weights.Weights` (a safetensors file), on a device, in eval mode."""
    from ..runtime.device import resolve_device  # noqa: PLC0415

    model = CharRNN(weights.config)
    model.load_state_dict({name: torch.from_numpy(array) for name, array in weights.arrays.items()})
    return model.to(resolve_device(device)).eval()
