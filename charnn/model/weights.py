"""Weights without pickle and without PyTorch: a model in one safetensors file.

Training writes best.safetensors beside best.pt whenever it writes best.pt, from the same weights;
`charnn export` writes one for any checkpoint. The file holds the model's tensors under PyTorch's
names and shapes (`CharRNN.state_dict()`, see `charnn.model.spec`), float32, and in the
header's metadata (text only, so each value is JSON) what they are: `format` ("charnn-weights"),
`format_version`, `model_config`, `vocab`, `step`, `val_loss`, `train_config`, `corpus` and
`weights_sha256` (of the tensors' bytes, in name order). Reading it executes nothing: the header is
JSON, the tensors raw numbers, and every value is checked against the others before it is used. Which
file of a run to read, and `charnn export`, are `charnn.runs.locate`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..config import ModelConfig
from ..data.checked import finite, plain, read_model_config, whole
from ..data.files import WEIGHTS_SUFFIX, atomic_write, require_file
from ..data.vocab import Vocab
from ..errors import CharnnError
from .spec import parameter_count, weight_shapes

FORMAT = "charnn-weights"
FORMAT_VERSION = 1
_RECORDS = ("step", "val_loss", "train_config", "corpus")  # what a checkpoint says besides the weights


@dataclass(frozen=True)
class Weights:
    """A model's weights, what they are, and how far training had got when they were written."""

    config: ModelConfig
    vocab: Vocab
    arrays: dict[str, np.ndarray]  # float32, by PyTorch's names
    records: dict = field(default_factory=dict)  # step, val_loss, train_config, corpus

    @property
    def step(self) -> int | None:
        step = self.records.get("step")
        return step if isinstance(step, int) and not isinstance(step, bool) else None

    @property
    def parameters(self) -> int:
        """Trainable numbers: a tied output matrix counts once."""
        return parameter_count(self.config)

    def payload(self) -> dict:
        """What a checkpoint file says about itself, for `charnn info`."""
        return {"model_config": self.config.to_dict(), "vocab": self.vocab.to_dict(), **self.records}


def arrays_from_state(state: Mapping) -> dict[str, np.ndarray]:
    """A state dict's tensors (torch's, or anything with `.numpy()`) as float32 numpy arrays."""
    arrays = {}
    for name, tensor in state.items():
        if hasattr(tensor, "detach"):
            tensor = tensor.detach().cpu().float().numpy()
        arrays[name] = np.ascontiguousarray(tensor, dtype=np.float32)
    return arrays


def weights_from_payload(payload: dict) -> Weights:
    """The weights of a loaded checkpoint (`charnn.model.checkpoint.load_checkpoint`'s payload)."""
    records = {key: payload.get(key) for key in _RECORDS}
    return Weights(ModelConfig.from_dict(payload["model_config"]), Vocab.from_dict(payload["vocab"]),
                   arrays_from_state(payload["model_state"]), records)


def _checksum(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(np.ascontiguousarray(arrays[name]).data)
    return digest.hexdigest()


def encode_weights(weights: Weights) -> bytes:
    """The safetensors file's bytes."""
    from safetensors.numpy import save  # noqa: PLC0415 (only writers need it)

    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "model_config": json.dumps(weights.config.to_dict()), "vocab": json.dumps(weights.vocab.to_dict()),
                **{key: json.dumps(weights.records.get(key)) for key in _RECORDS},
                "weights_sha256": _checksum(weights.arrays)}
    return save(weights.arrays, metadata=metadata)


def write_weights(path: str | os.PathLike, weights: Weights) -> None:
    """Write the file atomically: a reader sees the old file or the new one, never half of one."""
    data = encode_weights(weights)
    atomic_write(path, lambda f: f.write(data))


# --- reading, every value checked ---------------------------------------------------------------


def _open(path: Path):
    """The file opened by safetensors (which maps it and checks its header), or a CharnnError."""
    from safetensors import safe_open  # noqa: PLC0415

    require_file(path, "weights file")
    try:
        return safe_open(path, framework="np")
    except Exception as err:  # safetensors' own SafetensorError, or an OSError
        reason = str(err).removeprefix("Error while deserializing header: ").strip().splitlines()[0]
        raise CharnnError(f"{path}: not a readable safetensors file: damaged or truncated ({reason})") from None


def _header(path: Path, handle) -> tuple[ModelConfig, Vocab, dict]:
    """The model config, vocabulary and records of the metadata, each checked."""
    metadata = handle.metadata() or {}
    if metadata.get("format") != FORMAT:
        raise CharnnError(f"{path}: not a charnn weights file (a safetensors file without charnn's metadata)")
    version = metadata.get("format_version", "")
    if not (version.isascii() and version.isdigit()) or int(version) < 1:
        raise CharnnError(f"{path}: weights file has no valid format_version")
    if int(version) > FORMAT_VERSION:
        raise CharnnError(f"{path}: weights format version {version} is newer than this charnn supports "
                          f"({FORMAT_VERSION})", hint="upgrade charnn to load it")
    values = {}
    for key in ("model_config", "vocab", *_RECORDS):
        if key not in metadata and key in ("model_config", "vocab"):
            raise CharnnError(f"{path}: its metadata is incomplete (no {key})")
        try:
            values[key] = json.loads(metadata.get(key, "null"))
        except (ValueError, RecursionError):
            raise CharnnError(f"{path}: its metadata is damaged ({key} is not JSON, or nested too deep)") from None
    try:
        config = read_model_config(values["model_config"])
        vocab = Vocab.from_dict(values["vocab"])
    except (CharnnError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise CharnnError(f"{path}: its metadata does not describe a valid model ({err})") from None
    if vocab.size != config.vocab_size:
        raise CharnnError(f"{path}: its vocabulary ({vocab.size}) does not match the model ({config.vocab_size})")
    return config, vocab, _records(values) | {"weights_sha256": metadata.get("weights_sha256")}


def _records(values: dict) -> dict:
    """What the metadata says besides the model, each as what it should be, else None (a file may hold
    anything there; the weights stay usable)."""
    val_loss = values["val_loss"]
    return {"step": whole(values["step"]), "val_loss": val_loss if isinstance(val_loss, float) else finite(val_loss),
            **{key: plain(values[key]) if isinstance(values[key], dict) else None for key in ("train_config", "corpus")}}


def _check_tensors(path: Path, config: ModelConfig, shapes: Mapping[str, tuple], dtypes: Mapping[str, str]) -> None:
    expected = weight_shapes(config)
    missing = [name for name in expected if name not in shapes]
    if missing:
        raise CharnnError(f"{path}: tensor {missing[0]} is missing ({len(missing)} of the model's "
                          f"{len(expected)} are)")
    extra = sorted(set(shapes) - set(expected))
    if extra:
        raise CharnnError(f"{path}: holds tensors a {config.num_layers}-layer {config.cell.upper()} does not have "
                          f"({', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''})")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise CharnnError(f"{path}: tensor {name} has shape {tuple(shapes[name])}; the model needs {shape}")
        if dtypes[name] not in ("F16", "F32", "F64"):
            raise CharnnError(f"{path}: tensor {name} is {dtypes[name]}; charnn reads float weights (F32, F16, F64)")


def read_weights(path: str | os.PathLike) -> Weights:
    """The weights in a safetensors file, checked: every failure is a CharnnError naming the file."""
    path = Path(path)
    with _open(path) as handle:
        config, vocab, records = _header(path, handle)
        names = list(handle.keys())
        slices = {name: handle.get_slice(name) for name in names}
        _check_tensors(path, config, {n: s.get_shape() for n, s in slices.items()},
                       {n: s.get_dtype() for n, s in slices.items()})
        stored = {name: handle.get_tensor(name) for name in names}
    checksum = records.pop("weights_sha256")
    if checksum is not None and checksum != _checksum(stored):
        raise CharnnError(f"{path}: its weights are damaged (they do not match the checksum in its header)",
                          hint="write it again with `charnn export`")
    arrays = {name: np.ascontiguousarray(array, dtype=np.float32) for name, array in stored.items()}
    for name, array in arrays.items():
        if not np.isfinite(array).all():
            raise CharnnError(f"{path}: tensor {name} holds non-finite weights")
    return Weights(config, vocab, arrays, records)


def read_records(path: str | os.PathLike) -> Weights:
    """The header alone (no tensor is read): config, vocabulary and records, with empty arrays of the
    right sizes for counting parameters. For `charnn info`, which only describes the file."""
    path = Path(path)
    with _open(path) as handle:
        config, vocab, records = _header(path, handle)
        shapes = {name: handle.get_slice(name).get_shape() for name in handle.keys()}
    records.pop("weights_sha256")
    arrays = {name: np.broadcast_to(np.float32(0), shape) for name, shape in shapes.items()}  # sizes, no data
    return Weights(config, vocab, arrays, records)


def is_weights_file(path: str | os.PathLike) -> bool:
    """Whether a path names a safetensors file: by its suffix, or (the format has no magic number)
    by its start, an 8-byte header length and the header's opening brace."""
    path = Path(path)
    if path.suffix == WEIGHTS_SUFFIX:
        return True
    try:
        with open(path, "rb") as f:
            start = f.read(9)
    except OSError:
        return False
    return len(start) == 9 and start[8:] == b"{" and int.from_bytes(start[:8], "little") < path.stat().st_size


def is_charnn_weights(path: Path) -> bool:
    """Whether a file is a safetensors file with charnn's metadata (its header alone is read)."""
    try:
        with _open(path) as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except CharnnError:
        return False
