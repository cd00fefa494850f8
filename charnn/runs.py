"""Runs: a directory per training run, the newest one remembered, and starting or resuming training.

A run directory holds:
    config.json     model, training and corpus settings, for people and tools
    metrics.jsonl   one JSON object per log line and per evaluation
    tokens.npy      the encoded corpus (memory-mapped; a hard link into the cache), so a resume needs
                    neither the files nor stdin again
    last.pt         everything needed to resume (weights, optimiser, schedule, RNG, data position)
    best.pt         the weights with the lowest validation loss, for sampling and evaluation
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .checkpoint import load_checkpoint, remove_temporaries, write_json
from .config import ModelConfig, TrainConfig
from .corpus import corpus_files
from .data import check_split_sizes, split_train_val
from .device import resolve_device
from .distributed import SINGLE, Ranks, broadcast_object
from .distributed import start as start_distributed
from .errors import CharnnError
from .tokens import EncodedCorpus, encode_cached, open_tokens, place_tokens
from .train import SNAPSHOT_DIR, Trainer, TrainEvents
from .vocab import Vocab

RUNS_DIR_ENV = "CHARNN_RUNS_DIR"
LATEST_FILE = "latest"
RUN_FILES = ("config.json", "metrics.jsonl", "tokens.npy", "last.pt", "best.pt")
# options that may change when resuming; every other one is fixed by the run
RESUMABLE_OPTIONS = ("epochs", "max_steps", "max_time", "eval_every", "eval_chars", "save_every_steps",
                     "save_every_seconds", "keep", "log_every", "device", "patience", "sample_every", "sample_chars")
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV, "runs"))


# --- finding runs and checkpoints -------------------------------------------------------------


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in ("config.json", "last.pt", "best.pt"))


def looks_like_checkpoint(path: Path) -> bool:
    """A run directory, a .pt file, or any file that starts like a torch.save archive."""
    if is_run_dir(path):
        return True
    if path.suffix == ".pt":
        return True
    if path.is_file():
        with open(path, "rb") as f:
            return f.read(4) == _ZIP_MAGIC
    return False


def remember_latest(run_dir: Path, root: Path | None = None) -> None:
    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    (root / LATEST_FILE).write_text(str(run_dir.resolve()) + "\n", encoding="utf-8")


def latest_run(root: Path | None = None) -> Path:
    root = root or runs_root()
    pointer = root / LATEST_FILE
    if pointer.is_file():
        remembered = Path(pointer.read_text(encoding="utf-8").strip())
        if is_run_dir(remembered):
            return remembered
    candidates = [p for p in root.iterdir() if is_run_dir(p)] if root.is_dir() else []
    if not candidates:
        raise CharnnError(
            f"no trained model found under {root}/",
            hint="train one with `charnn train CORPUS`, or name a run directory or checkpoint",
        )
    return max(candidates, key=lambda p: max((p / n).stat().st_mtime for n in RUN_FILES if (p / n).exists()))


def resolve_checkpoint(model: str | Path | None, prefer: str = "best") -> Path:
    """The checkpoint a sample/eval command should load: a file as given, or a run's best (else last)."""
    path = latest_run() if model is None else Path(model)
    if path.is_dir():
        order = ("best.pt", "last.pt") if prefer == "best" else ("last.pt", "best.pt")
        for name in order:
            if (path / name).is_file():
                return path / name
        if is_run_dir(path):
            raise CharnnError(f"{path}: run has no checkpoint yet", hint="wait for the first evaluation or save")
        raise CharnnError(f"{path}: not a run directory (no config.json, last.pt or best.pt)")
    if not path.exists():
        raise CharnnError(f"{path}: no such run directory or checkpoint")
    return path


# --- run directories --------------------------------------------------------------------------


def new_run_dir(name: str, out: str | Path | None = None, overwrite: bool = False) -> Path:
    """Where a new run goes: `out` if given, else runs/NAME, runs/NAME-2, ... never reusing one.

    Nothing is created or removed here: that waits for `prepare_run_dir`, once everything that can
    fail before training (reading the corpus, building the model) has succeeded.
    """
    if out is not None:
        run_dir = Path(out)
        if run_dir.exists() and not run_dir.is_dir():
            raise CharnnError(f"--out {run_dir}: exists and is not a directory")
        if is_run_dir(run_dir) and not overwrite:
            raise CharnnError(f"--out {run_dir}: already holds a run",
                              hint="use --resume to continue it, --overwrite to replace it, or another --out")
        return run_dir
    root = runs_root()
    run_dir = root / name
    n = 2
    while run_dir.exists():
        run_dir = root / f"{name}-{n}"
        n += 1
    return run_dir


def prepare_run_dir(run_dir: Path) -> None:
    """Create the run directory, removing the files of a run it held (--overwrite was checked earlier)."""
    for file in RUN_FILES:
        (run_dir / file).unlink(missing_ok=True)
    shutil.rmtree(run_dir / SNAPSHOT_DIR, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def load_tokens(run_dir: Path) -> np.ndarray:
    path = run_dir / "tokens.npy"
    if not path.is_file():
        raise CharnnError(f"{run_dir}: run has no tokens.npy; cannot resume without the encoded corpus")
    return open_tokens(path)


def delimiter_ids(vocab: Vocab, delimiter: str) -> tuple[int, ...]:
    """--reset-on's string as token ids; every character must occur in the corpus."""
    if not delimiter:
        raise CharnnError("--reset-on needs a non-empty delimiter")
    try:
        return tuple(int(i) for i in vocab.encode(delimiter.encode("utf-8", "surrogateescape")))
    except CharnnError:
        raise CharnnError(f"--reset-on {delimiter!r}: the corpus does not contain all its characters") from None


# --- starting and resuming training ------------------------------------------------------------


def start_training(
    corpus_paths: Sequence[str],
    model_options: dict,
    config: TrainConfig,
    vocab_mode: str = "char",
    out: str | Path | None = None,
    overwrite: bool = False,
    events: TrainEvents | None = None,
    should_stop: Callable[[], str | None] | None = None,
    stdin=None,
    ranks: Ranks = SINGLE,
) -> Trainer:
    """Read and encode the corpus, create the run directory, and return a Trainer ready to `run()`.

    With several ranks (torchrun), rank 0 does all of that and the others then join the run it made.
    """
    config.validate()
    if ranks.active:
        return _start_on_ranks(corpus_paths, model_options, config, vocab_mode, out, overwrite, events, should_stop,
                               stdin, ranks)
    return _start(corpus_paths, model_options, config, vocab_mode, out, overwrite, events, should_stop, stdin)


def _start(corpus_paths, model_options, config, vocab_mode, out, overwrite, events, should_stop, stdin,
           ranks: Ranks = SINGLE) -> Trainer:
    root = runs_root()
    with corpus_files(corpus_paths, stdin=stdin, spool_dir=root / ".cache") as corpus:
        encoded = encode_cached(corpus, vocab_mode, root)
        name, sources = corpus.name, corpus.sources
    try:
        trainer, run_dir = _new_run(encoded, name, sources, model_options, config, out, overwrite, events,
                                    should_stop, ranks)
    finally:
        if encoded.path.name.endswith(".tmp"):  # stdin's encoding, not yet moved into a run
            encoded.path.unlink(missing_ok=True)
    return trainer


def _start_on_ranks(corpus_paths, model_options, config, vocab_mode, out, overwrite, events, should_stop, stdin,
                    ranks: Ranks) -> Trainer:
    ranks.streams(config.batch_size)  # every rank refuses a batch that does not divide, before any work
    start_distributed(ranks, resolve_device(config.device))
    if ranks.is_main:
        try:
            trainer = _start(corpus_paths, model_options, config, vocab_mode, out, overwrite, events, should_stop,
                             stdin, ranks)
        except CharnnError as err:
            broadcast_object({"error": str(err)})
            raise
        broadcast_object({"run_dir": str(trainer.run_dir)})
        return trainer
    started = broadcast_object(None)
    if "error" in started:
        raise CharnnError(f"rank 0 could not start the run: {started['error']}")
    return _join_run(Path(started["run_dir"]), events, should_stop, ranks)


def _join_run(run_dir: Path, events, should_stop, ranks: Ranks) -> Trainer:
    """The Trainer of a run that rank 0 has just created, for another rank."""
    saved = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(saved["train"])
    train_tokens, val_tokens = split_train_val(load_tokens(run_dir), config.val_frac)
    return Trainer(ModelConfig.from_dict(saved["model"]), config, Vocab.from_dict(saved["vocab"]), train_tokens,
                   val_tokens, run_dir, events=events, should_stop=should_stop, extra={"corpus": saved["corpus"]},
                   ranks=ranks)


def _new_run(encoded: EncodedCorpus, name: str, sources, model_options: dict, config: TrainConfig, out,
             overwrite: bool, events, should_stop, ranks: Ranks = SINGLE) -> tuple[Trainer, Path]:
    vocab, tokens = encoded.vocab, encoded.tokens()
    model_options = dict(model_options)
    reset_on = model_options.pop("reset_on", None)
    if reset_on is not None:
        model_options["reset_ids"] = delimiter_ids(vocab, reset_on)
    model_config = ModelConfig(vocab_size=vocab.size, **model_options).validate()
    train_tokens, val_tokens = split_train_val(tokens, config.val_frac)
    check_split_sizes(train_tokens, val_tokens, config.batch_size, config.seq_len)
    corpus_info = {
        "sources": [os.path.abspath(s) if s != "-" else "-" for s in sources],
        "fingerprint": encoded.fingerprint,
        "bytes": encoded.bytes,
        "tokens": int(len(tokens)),
        "train_tokens": int(len(train_tokens)),
        "val_tokens": int(len(val_tokens)),
    }
    run_dir = new_run_dir(name, out, overwrite)
    trainer = Trainer(model_config, config, vocab, train_tokens, val_tokens, run_dir,
                      events=events, should_stop=should_stop, extra={"corpus": corpus_info}, ranks=ranks)
    prepare_run_dir(run_dir)
    place_tokens(encoded, run_dir)
    write_json(run_dir / "config.json", {
        "model": model_config.to_dict(),
        "train": config.to_dict(),
        "vocab": vocab.to_dict(),
        "corpus": corpus_info,
        "parameters": trainer.model.num_parameters(),
    })
    remember_latest(run_dir)
    return trainer, run_dir


def resume_training(
    run_dir: str | Path,
    overrides: dict | None = None,
    corpus_paths: Sequence[str] | None = None,
    events: TrainEvents | None = None,
    should_stop: Callable[[], str | None] | None = None,
    stdin=None,
    ranks: Ranks = SINGLE,
) -> Trainer:
    """A Trainer that continues `run_dir` from its last.pt, exactly where it stopped.

    `overrides` may change only the stop conditions, cadence and device; any other
    option that differs from the run's is an error, as is a corpus other than the run's.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CharnnError(f"--resume {run_dir}: no such run directory")
    last = run_dir / "last.pt"
    if not last.is_file():
        raise CharnnError(f"--resume {run_dir}: run has no last.pt to resume from")
    payload = load_checkpoint(last)
    if "train_state" not in payload or "train_config" not in payload:
        raise CharnnError(f"{last}: checkpoint holds no training state to resume from")
    model_config = ModelConfig.from_dict(payload["model_config"])
    vocab = Vocab.from_dict(payload["vocab"])
    saved = TrainConfig.from_dict(payload["train_config"])
    overrides = dict(overrides or {})
    for key in list(overrides):
        if key in ("model", "vocab_mode"):
            continue
        if key not in RESUMABLE_OPTIONS and overrides[key] != getattr(saved, key):
            flag = "--" + key.replace("_", "-")
            raise CharnnError(f"--resume: {flag} {overrides[key]} contradicts the run's {getattr(saved, key)}",
                              hint="leave it out to keep the run's setting, or start a new run")
    model_overrides = dict(overrides.pop("model", None) or {})
    if model_overrides.get("reset_on") is not None:
        model_overrides["reset_ids"] = delimiter_ids(vocab, model_overrides["reset_on"])
    model_overrides.pop("reset_on", None)
    for key, value in model_overrides.items():
        if value != getattr(model_config, key):
            flag = "--" + key.replace("_", "-").replace("num-layers", "layers").replace("reset-ids", "reset-on")
            raise CharnnError(f"--resume: {flag} {value} contradicts the run's {getattr(model_config, key)}",
                              hint="the architecture is fixed when a run starts")
    vocab_mode = overrides.pop("vocab_mode", None)
    if vocab_mode is not None and vocab_mode != vocab.mode:
        raise CharnnError(f"--resume: the run uses a {vocab.mode}-level vocabulary, not {vocab_mode}-level")
    config = replace(saved, **{k: v for k, v in overrides.items() if k in RESUMABLE_OPTIONS}).validate()
    tokens = load_tokens(run_dir)
    corpus_info = payload.get("corpus", {})
    if corpus_paths:
        with corpus_files(corpus_paths, stdin=stdin, spool_dir=run_dir) as corpus:
            fingerprint = corpus.fingerprint()
        if fingerprint != corpus_info.get("fingerprint"):
            raise CharnnError(f"--resume {run_dir}: the corpus given is not the one this run was trained on",
                              hint="leave the corpus out: the run keeps its own encoded copy")
    if len(tokens) != corpus_info.get("tokens", len(tokens)) or (
            len(tokens) and int(np.max(tokens)) >= vocab.size):
        raise CharnnError(f"{run_dir}: tokens.npy does not match the run's vocabulary or corpus")
    train_tokens, val_tokens = split_train_val(tokens, config.val_frac)
    trainer = Trainer(model_config, config, vocab, train_tokens, val_tokens, run_dir,
                      events=events, should_stop=should_stop, extra={"corpus": corpus_info}, ranks=ranks)
    try:
        trainer.restore(payload)
    except (KeyError, ValueError, RuntimeError, TypeError) as err:
        raise CharnnError(f"{last}: cannot resume from this checkpoint ({type(err).__name__}: {err})") from None
    if ranks.is_main:
        for directory in (run_dir, run_dir / SNAPSHOT_DIR):
            remove_temporaries(directory)
        _record_resumed_config(run_dir, config)
        remember_latest(run_dir)
    return trainer


def _record_resumed_config(run_dir: Path, config: TrainConfig) -> None:
    """config.json shows the limits and cadence in force now (a resume may extend them)."""
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # a run without a readable config.json still resumes: last.pt has everything
    if saved.get("train") != config.to_dict():
        saved["train"] = config.to_dict()
        write_json(path, saved)

