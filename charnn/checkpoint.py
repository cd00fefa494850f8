"""Checkpoints: self-contained, safe to load, written atomically.

A checkpoint is a dict of plain Python values and tensors, saved with
torch.save and loaded with torch.load(weights_only=True), which refuses to
unpickle anything else. It carries a format name and version so that a foreign
or newer file is refused with a clear message instead of a traceback.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import ModelConfig
from .errors import CharnnError
from .model import CharRNN
from .vocab import Vocab

FORMAT = "charnn-checkpoint"
FORMAT_VERSION = 1


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, then rename it over `path`.

    Readers see the old file or the new one, never half of one; on any failure
    the old file is untouched and the temporary file is removed.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give them the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def keep_copy(path: str | os.PathLike, copy: str | os.PathLike) -> None:
    """Make `copy` hold what `path` holds now, atomically: a hard link where the file system allows
    one (no extra space; `path` is later replaced by rename, so the copy keeps the old contents)."""
    path, copy = Path(path), Path(copy)
    tmp = copy.with_name(f".{copy.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        atomic_write(copy, lambda f: f.write(path.read_bytes()))
        return
    os.replace(tmp, copy)
    _fsync_dir(copy.parent)


def remove_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporary files that writers killed mid-write (SIGKILL, power loss) left behind."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode("utf-8")))


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
