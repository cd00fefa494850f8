"""A run directory and the runs root: the one place that knows their layout.

A run directory holds:
    config.json       model, training and corpus settings, for people and tools
    metrics.jsonl     one JSON object per log line and per evaluation
    tokens.npy        the encoded corpus (memory-mapped; a hard link into the cache), so a resume needs
                      neither the files nor stdin again
    last.pt           everything needed to resume (weights, optimiser, schedule, RNG, data position)
    best.pt           the weights with the lowest validation loss, for sampling and evaluation
    best.safetensors  the same weights without pickle, read without PyTorch (written with best.pt)
    checkpoints/      with --keep: earlier last.pt files, step-N.pt

config.json names its format ("format": "charnn-run", "format_version"): that marker is how charnn
knows a directory is a run it made, and so one it may write into or replace (`charnn.runs.claim`). Runs
made before the marker are recognised by the sections of their config.json.

The runs root (runs/, or $CHARNN_RUNS_DIR) holds run directories, `latest` (the path of the newest
run, which commands use by default) and the token cache (`.cache/`, owned by `charnn.data.tokens`).
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.files import (WEIGHTS_SUFFIX, append_line, atomic_write, is_torch_archive, keep_copy, read_json,
                          remove_temporaries, write_json)
from ..errors import CharnnError

if TYPE_CHECKING:  # `charnn --help` and `charnn runs` start without numpy
    import numpy as np

RUNS_DIR_ENV = "CHARNN_RUNS_DIR"
LATEST = "latest"
RUN_FORMAT, RUN_FORMAT_VERSION = "charnn-run", 1
_LEGACY_SECTIONS = ("model", "train", "vocab", "corpus")  # a config.json written before the marker


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV, "runs"))


class RunDir:
    """One run's directory: every file in it is named, read and written here."""

    CONFIG, METRICS, TOKENS, LAST, BEST = "config.json", "metrics.jsonl", "tokens.npy", "last.pt", "best.pt"
    WEIGHTS = BEST.removesuffix(".pt") + WEIGHTS_SUFFIX  # best.pt's weights, read without PyTorch
    KEPT = "checkpoints"  # --keep: earlier last.pt files
    SET_ASIDE = ".replaced"  # the run that --overwrite replaces, until the new one has a model
    FILES = (CONFIG, METRICS, TOKENS, LAST, BEST, WEIGHTS)
    CHECKPOINTS = (LAST, BEST)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path, self.metrics_path = self.path / self.CONFIG, self.path / self.METRICS
        self.tokens_path, self.kept_dir = self.path / self.TOKENS, self.path / self.KEPT
        self.last, self.best, self.weights = self.path / self.LAST, self.path / self.BEST, self.path / self.WEIGHTS

    def __fspath__(self) -> str:
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    # --- what is there ---------------------------------------------------------------------

    @classmethod
    def is_run(cls, path: str | os.PathLike) -> bool:
        """A directory to read a run from (a damaged one included: `charnn runs` lists it with its problems).
        Whether charnn may write into it is `owned`'s question."""
        path = Path(path)
        try:
            return path.is_dir() and any((path / name).exists() for name in (cls.CONFIG, cls.LAST, cls.BEST, cls.WEIGHTS))
        except OSError:
            return False

    def owned(self) -> bool:
        """Whether charnn provably made this directory: its config.json carries charnn's run marker (or,
        from before the marker, exactly charnn's sections). Only such a directory is ever written into
        again or replaced."""
        config = read_json(self.config_path)
        if not isinstance(config, dict):
            return False
        version = config.get("format_version")
        if config.get("format") == RUN_FORMAT and isinstance(version, int) and not isinstance(version, bool):
            return True
        return "format" not in config and all(isinstance(config.get(k), dict) for k in _LEGACY_SECTIONS)

    def own_entries(self) -> list[Path]:
        """What charnn wrote here and may remove: the run's files, kept checkpoints and temporaries."""
        found = [self.path / name for name in self.FILES if (self.path / name).exists()]
        found += self.kept_checkpoints() + sorted(self.path.glob(".*.tmp"))
        return found

    def checkpoints(self) -> list[str]:
        """The names of last.pt and best.pt, those present."""
        return [name for name in self.CHECKPOINTS if (self.path / name).is_file()]

    def kept_checkpoints(self) -> list[Path]:
        return sorted(self.kept_dir.glob("step-*.pt"))  # zero-padded: name order is step order

    def checkpoint(self, prefer: str = "best") -> Path:
        """The checkpoint to load: best.pt (else last.pt), or last.pt first with prefer='last'."""
        order = (self.BEST, self.LAST) if prefer == "best" else (self.LAST, self.BEST)
        for name in order:
            if (self.path / name).is_file():
                return self.path / name
        self.require()
        raise CharnnError(f"{self.path}: run has no checkpoint yet", hint="wait for the first evaluation or save")

    def require(self) -> RunDir:
        """This run directory, or a CharnnError if the path is not one."""
        if not self.is_run(self.path):
            raise CharnnError(f"{self.path}: not a run directory (no {self.CONFIG}, {self.LAST} or {self.BEST})")
        return self

    def mtime(self) -> float:
        """When the newest of the run's files was written, in seconds since the epoch (0: none is)."""
        times = [0.0]
        for name in self.FILES:
            try:
                times.append((self.path / name).stat().st_mtime)
            except OSError:
                continue
        return max(times)

    def updated(self) -> datetime | None:
        mtime = self.mtime()
        return datetime.fromtimestamp(mtime).astimezone() if mtime else None

    # --- config.json -----------------------------------------------------------------------

    def read_config(self) -> dict | None:
        """config.json, or None if it is missing, unreadable or has no model section."""
        config = read_json(self.config_path)
        return config if isinstance(config, dict) and isinstance(config.get("model"), dict) else None

    def write_config(self, config: dict) -> None:
        """config.json, with charnn's run marker first."""
        write_json(self.config_path, {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **config})

    def record_train_config(self, train: dict) -> None:
        """config.json shows the limits and cadence in force now (a resume may extend them)."""
        saved = read_json(self.config_path)
        if not isinstance(saved, dict):
            return  # a run without a readable config.json still resumes: last.pt has everything
        if saved.get("train") != train:
            saved["train"] = train
            write_json(self.config_path, saved)

    def forget_model(self) -> None:
        """A run planned again for another model: the checkpoints, weights and metrics of the first model
        go (charnn wrote them all, in this session)."""
        for path in (self.best, self.weights, self.last, *self.kept_checkpoints()):
            path.unlink(missing_ok=True)
        self.cut_metrics_after(-1)

    # --- creating ----------------------------------------------------------------------------

    def remove_temporaries(self) -> None:
        """What writers killed mid-write left behind, in the run and its kept checkpoints."""
        for directory in (self.path, self.kept_dir):
            remove_temporaries(directory)

    # --- metrics.jsonl -----------------------------------------------------------------------

    def append_metrics(self, record: dict) -> None:
        append_line(self.metrics_path, (json.dumps(record) + "\n").encode("utf-8"))

    def cut_metrics_after(self, step: int) -> None:
        """Drop log lines written after `step` (the checkpoint a resume starts from): that stretch is
        trained again. Lines cut short by a crash go too."""
        if not self.metrics_path.is_file():
            return
        lines = self.metrics_path.read_bytes().splitlines()
        kept = [line for line in lines if _logged_by(line, step)]
        if len(kept) != len(lines):
            atomic_write(self.metrics_path, lambda f: f.write(b"".join(k + b"\n" for k in kept)))

    # --- kept checkpoints --------------------------------------------------------------------

    def keep_last(self, step: int) -> None:
        """With --keep: the last.pt about to be replaced (written at `step`) stays as checkpoints/step-N.pt."""
        if not self.last.is_file():
            return
        self.kept_dir.mkdir(exist_ok=True)
        keep_copy(self.last, self.kept_dir / f"step-{step:09d}.pt")

    def prune_kept(self, keep: int) -> None:
        """Remove the oldest kept checkpoints beyond the newest `keep`."""
        kept = self.kept_checkpoints()
        for old in kept[: max(len(kept) - keep, 0)]:
            old.unlink(missing_ok=True)

    # --- tokens.npy --------------------------------------------------------------------------

    def tokens(self) -> np.ndarray:
        from ..data.tokens import open_tokens  # noqa: PLC0415 (the token file format is charnn.tokens')

        if not self.tokens_path.is_file():
            raise CharnnError(f"{self.path}: run has no {self.TOKENS}; cannot resume without the encoded corpus")
        return open_tokens(self.tokens_path)

    def validation_tokens(self, val_frac) -> np.ndarray | None:
        """The run's own validation text (the last `val_frac` of its tokens), or None if it has none."""
        from ..data.batches import split_train_val  # noqa: PLC0415

        if not self.tokens_path.is_file() or isinstance(val_frac, bool) or not isinstance(val_frac, (int, float)):
            return None
        return split_train_val(self.tokens(), val_frac)[1]


def _logged_by(line: bytes, step: int) -> bool:
    """Whether a metrics line is a whole record written at `step` or before (a line cut short, of the
    wrong type or nested past what the parser takes is not)."""
    try:
        logged = json.loads(line)["step"]
    except (ValueError, KeyError, TypeError, IndexError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return isinstance(logged, int) and not isinstance(logged, bool) and logged <= step


# --- the runs root ----------------------------------------------------------------------------


def check_latest_pointer(root: Path | None = None) -> None:
    """Refuse, before anything is written, a `latest` that charnn cannot replace (a directory)."""
    pointer = (root or runs_root()) / LATEST
    if pointer.is_dir() and not pointer.is_symlink():
        raise CharnnError(f"{pointer}: is a directory; charnn keeps the path of the newest run in this file",
                          hint="move the directory elsewhere")


def remember_latest(run_dir: str | os.PathLike, root: Path | None = None) -> None:
    """Point `latest` at this run: a new file renamed over the old pointer, never written through it
    (a symbolic link there is replaced, not followed)."""
    root = root or runs_root()
    root.mkdir(parents=True, exist_ok=True)
    check_latest_pointer(root)
    text = str(Path(run_dir).resolve()) + "\n"
    atomic_write(root / LATEST, lambda f: f.write(text.encode("utf-8")))


def _remembered(pointer: Path) -> Path | None:
    """The run a `latest` file names, if it is a readable pointer to a run."""
    try:
        if not pointer.is_file() or pointer.stat().st_size > 65536:
            return None
        remembered = Path(pointer.read_bytes().decode("utf-8").strip())
    except (OSError, UnicodeDecodeError, ValueError):
        return None  # damaged: fall back to the newest run
    return remembered if str(remembered) and RunDir.is_run(remembered) else None


def latest_run(root: Path | None = None) -> Path:
    """The run `runs/latest` names, else the run directory under the root written to last."""
    root = root or runs_root()
    remembered = _remembered(root / LATEST)
    if remembered is not None:
        return remembered
    candidates = [RunDir(p) for p in run_dirs(root)]
    if not candidates:
        raise CharnnError(
            f"no trained model found under {root}/",
            hint="train one with `charnn train CORPUS`, or name a run directory or checkpoint",
        )
    return max(candidates, key=RunDir.mtime).path


def run_dirs(root: Path) -> list[Path]:
    """The run directories directly under `root`; hidden ones (the token cache) and `latest` skipped."""
    if not root.is_dir():
        return []
    return [path for path in sorted(root.iterdir())
            if not path.name.startswith(".") and path.name != LATEST and RunDir.is_run(path)]


def resolve_checkpoint(model: str | os.PathLike | None, prefer: str = "best") -> Path:
    """The checkpoint a sample/eval command should load: a file as given, or a run's best (else last)."""
    path = latest_run() if model is None else Path(model)
    if path.is_dir():
        return RunDir(path).checkpoint(prefer)
    if not path.exists():
        raise CharnnError(f"{path}: no such run directory or checkpoint")
    return path


def weights_beside(checkpoint: Path) -> Path:
    """The safetensors file that holds a checkpoint's weights: best.pt -> best.safetensors."""
    return checkpoint.with_suffix(WEIGHTS_SUFFIX)


def looks_like_checkpoint(path: Path) -> bool:
    """A run directory, a .pt file, or any file that starts like a torch.save archive."""
    return RunDir.is_run(path) or path.suffix == ".pt" or (path.is_file() and is_torch_archive(path))
