"""What a model argument names: a run directory, a checkpoint, a .safetensors file or a base model, and
which of a run's files to read; and writing a run's weights without pickle (`charnn export`).

A run's best.safetensors is what sampling reads when it holds best.pt's weights (`weights_for`); a file
given is read as it is. Torch-free until a checkpoint must be loaded (`open_model`, `load_weights`).
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.files import is_torch_archive
from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.base import base_model_path
from ..model.weights import (Weights, encode_weights, is_charnn_weights, is_weights_file, read_records, read_weights,
                             weights_from_payload, write_weights)
from ..printable import brief
from .rundir import RunDir, latest_run, resolve_checkpoint, weights_beside

if TYPE_CHECKING:  # PyTorch: only to open a model as a torch module
    from ..model.network import CharRNN


def resolve_model(source: str | os.PathLike) -> Path:
    """What a model argument names: an existing path as given; else a base model's name ('english')."""
    path = Path(source)
    if path.exists() or not isinstance(source, str):
        return path
    return base_model_path(source) or path


def weights_for(model: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """The file to sample from, and a note for people when it is not the obvious one.

    A safetensors file as given; for a run directory (default: the newest run) or a checkpoint, the
    safetensors file beside its checkpoint (best.safetensors beside best.pt) when it holds the same
    weights, else the checkpoint itself, which needs PyTorch to load.
    """
    path = latest_run() if model is None else resolve_model(model)
    if path.is_file() and is_weights_file(path):
        return path, None
    run = RunDir(path)
    if path.is_dir() and run.weights.is_file() and not run.best.is_file():  # best.pt gone: its weights are here
        return run.weights, None
    checkpoint = resolve_checkpoint(path)
    beside = weights_beside(checkpoint)
    if not beside.is_file():
        return checkpoint, None
    try:
        mismatch = _mismatch(read_records(beside), checkpoint)
    except CharnnError as err:  # damaged: the checkpoint holds the same weights
        return checkpoint, (f"{err.message}; sampling from {checkpoint.name} (`charnn export {checkpoint}` "
                            "writes it again)")
    if mismatch:
        return checkpoint, (f"{beside} does not hold {checkpoint.name}'s weights ({mismatch}); sampling from "
                            f"{checkpoint.name} (`charnn export {checkpoint}` writes it again)")
    return beside, None


def _mismatch(weights: Weights, checkpoint: Path) -> str | None:
    """How a safetensors file's records differ from its checkpoint's (a crash between writing the two,
    or a checkpoint copied over): None when they agree, or when the checkpoint cannot be read here."""
    from ..model.archive import NotPeekable, peek_checkpoint  # noqa: PLC0415

    try:
        payload = peek_checkpoint(checkpoint)
    except NotPeekable:
        return None
    for key in ("step", "val_loss"):
        if payload.get(key) != weights.records.get(key):
            return f"{key} {brief(weights.records.get(key))} against {brief(payload.get(key))}"
    return None


# --- charnn export ---------------------------------------------------------------------------------


def load_weights(source: Path) -> Weights:
    """The weights of a checkpoint (loaded with PyTorch, as `load_checkpoint` does) or of a safetensors file."""
    if is_weights_file(source):
        return read_weights(source)
    from ..model.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: PLC0415 (PyTorch: a checkpoint)

    payload = load_checkpoint(source)
    model_from_checkpoint(payload, source)  # the same checks as for sampling from it
    return weights_from_payload(payload)


def export_weights(model: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> tuple[str, Weights]:
    """Write the safetensors file of a run directory's checkpoint (its best.pt, else last.pt; default:
    the newest run) or of a checkpoint file: to `out`, by default beside the checkpoint (best.pt ->
    best.safetensors), or to stdout with "-". Returns where it went and what it holds."""
    source = resolve_checkpoint(model)
    weights = load_weights(source)
    if out is not None and str(out) == "-":
        try:
            sys.stdout.buffer.write(encode_weights(weights))
            sys.stdout.buffer.flush()
        except BrokenPipeError:
            raise
        except OSError as err:  # a full disk behind a redirection, /dev/full
            raise CharnnError(f"cannot write to stdout ({err.strerror or err})") from None
        return "-", weights
    target = Path(out) if out is not None else weights_beside(source)
    if target.resolve() == source.resolve():
        raise CharnnError(f"{target}: is the file being exported", hint="name another file with -o")
    check_export_target(target)
    write_weights(target, weights)
    return str(target), weights


def check_export_target(target: Path) -> None:
    """`export` writes a new regular file, or replaces one charnn wrote (weights with charnn's metadata):
    never a device, FIFO, socket or symbolic link (the rename would put a file in its place), never
    another file of a run directory, never a file of someone else's."""
    try:
        mode = target.lstat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as err:
        raise CharnnError(f"-o {target}: cannot look at it ({err.strerror})") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise CharnnError(f"-o {target}: is a directory", hint=f"name a file, e.g. {target / 'model.safetensors'}")
    if not target.parent.is_dir():
        raise CharnnError(f"-o {target}: no such directory {target.parent}")
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file (a device, FIFO or socket)"
        raise CharnnError(f"-o {target}: is {kind}; refusing to replace it", hint="name a new file, or - for stdout")
    if RunDir.is_run(target.parent) and target.name in RunDir.FILES and target.name != RunDir.WEIGHTS:
        raise CharnnError(f"-o {target}: is the run's own {target.name}; refusing to replace it",
                          hint=f"name another file, e.g. {target.parent / RunDir.WEIGHTS}")
    if mode is not None and not is_charnn_weights(target):
        what = "a PyTorch checkpoint" if is_torch_archive(target) else "a file charnn did not write"
        raise CharnnError(f"-o {target}: is {what}; refusing to overwrite it", hint="name a new file, or remove it first")


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to sample or evaluate, with where it came from."""

    path: Path  # the checkpoint file
    model: CharRNN  # in eval mode, on the device asked for (PyTorch's)
    vocab: Vocab
    payload: dict  # the whole checkpoint (training config, corpus, step)


def open_model(path: str | os.PathLike | None = None, device: str = "auto") -> LoadedModel:
    """The model of a checkpoint file, .safetensors file or run directory (its best.pt, else last.pt;
    default: the newest run)."""
    from ..model.checkpoint import load_checkpoint, model_from_checkpoint, model_from_weights  # noqa: PLC0415
    from ..runtime.device import resolve_device  # noqa: PLC0415

    checkpoint = resolve_checkpoint(path)
    if checkpoint.is_file() and is_weights_file(checkpoint):
        weights = read_weights(checkpoint)
        return LoadedModel(checkpoint, model_from_weights(weights, device), weights.vocab, weights.payload())
    payload = load_checkpoint(checkpoint)
    model, vocab = model_from_checkpoint(payload, checkpoint)
    return LoadedModel(checkpoint, model.to(resolve_device(device)), vocab, payload)
