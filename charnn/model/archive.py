"""A checkpoint's plain values read without PyTorch, and without executing anything from the file.

`torch.save` writes a zip archive: `data.pkl`, a pickle of the payload in which each tensor is a call
to rebuild it from a storage saved beside it. `peek_checkpoint` unpickles `data.pkl` alone with an
unpickler that knows only a few names and answers each with an inert stand-in: a tensor becomes a
`TensorInfo` (its shape and storage, no data), and any other name stops the reading. So `charnn
info` and `charnn runs` read a checkpoint's step, losses, configuration and vocabulary in a few
milliseconds, where loading it would first import PyTorch (seconds). Loading for real is
`charnn.model.checkpoint.load_checkpoint`'s, with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass

FORMAT = "charnn-checkpoint"  # every checkpoint says so, with its format_version
FORMAT_VERSION = 1
_MAX_PICKLE = 64 << 20  # data.pkl holds no tensor data: a bigger one is not a charnn checkpoint


class NotPeekable(Exception):
    """The file cannot be read this way; `load_checkpoint` says what is wrong with it, or loads it."""


@dataclass(frozen=True)
class TensorInfo:
    """A tensor of the pickle, as its shape and storage (its data stays in the archive)."""

    storage: str
    offset: int
    shape: tuple[int, ...]

    def numel(self) -> int:
        return math.prod(self.shape)

    def data_ptr(self) -> tuple[str, int]:  # shared by tensors that share memory (tied weights)
        return self.storage, self.offset


@dataclass(frozen=True)
class _Storage:
    key: str


def _rebuild_tensor(storage: _Storage, offset: int, shape, *rest) -> TensorInfo:
    return TensorInfo(storage.key, int(offset), tuple(int(n) for n in shape))


class _StorageType:
    """torch.FloatStorage and the like: named in each tensor's persistent id, never called."""


class _InertUnpickler(pickle.Unpickler):
    _NAMES = {("collections", "OrderedDict"): OrderedDict, ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor}

    def find_class(self, module: str, name: str):
        if (module, name) in self._NAMES:
            return self._NAMES[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return _StorageType
        raise NotPeekable(f"{module}.{name}")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise NotPeekable("an unknown persistent object")
        return _Storage(str(pid[2]))


def peek_checkpoint(path: str | os.PathLike) -> dict:
    """A charnn checkpoint's payload, tensors as `TensorInfo`. Raises NotPeekable for anything that is
    not plainly one (a damaged, foreign, newer or unsafe file): `load_checkpoint` then decides."""
    try:
        with zipfile.ZipFile(path) as archive:
            entry = next((i for i in archive.infolist() if i.filename.endswith("/data.pkl")), None)
            if entry is None or entry.file_size > _MAX_PICKLE:
                raise NotPeekable("no data.pkl")
            with archive.open(entry) as f:
                payload = _InertUnpickler(f).load()
    except (OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError,
            KeyError, AttributeError, OverflowError, RecursionError) as err:
        raise NotPeekable(str(err)) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NotPeekable("not a charnn checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise NotPeekable("format_version")
    if not all(key in payload for key in ("model_config", "vocab", "model_state")):
        raise NotPeekable("incomplete")
    return payload
