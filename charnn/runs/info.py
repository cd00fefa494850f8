"""One run directory, checkpoint or weights file in full: what `charnn info` shows.

Like the run listings (charnn.runs.history) it reads config.json and metrics.jsonl first, and checkpoints
without PyTorch where it can; what cannot be read is a problem to show, never a failure, except for a
path that is neither a run nor a model file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..data.checked import finite, plain, section, text, whole
from ..errors import CharnnError
from ..printable import printable_chars
from .history import (RunSummary, config_from_checkpoint, config_or_checkpoint, latest_path, read_checkpoint,
                      summarize_run)
from .metrics import Progress, read_metrics
from .rundir import RunDir, latest_run, runs_root


@dataclass
class CheckpointInfo:
    """A checkpoint file of a run: which, at which step, how big, and whether training can resume from it."""

    file: str  # relative to the run directory
    role: str  # "last", "best" or "kept"
    bytes: int
    step: int | None = None
    val_loss: float | None = None
    resumable: bool | None = None  # holds the optimiser and data position (last.pt, kept checkpoints)
    error: str | None = None  # why it could not be read

    def to_dict(self) -> dict:
        return {"file": self.file, "role": self.role, "bytes": self.bytes, "step": self.step,
                "val_loss": self.val_loss, "resumable": self.resumable, "error": self.error}


def _checkpoint_info(path: Path, file: str, role: str, payload: dict | None = None) -> CheckpointInfo:
    info = CheckpointInfo(file=file, role=role, bytes=path.stat().st_size)
    try:
        payload = payload if payload is not None else read_checkpoint(path)
    except CharnnError as err:
        info.error = str(err).removeprefix(f"{path}: ")
        return info
    info.step = whole(payload.get("step"))
    info.val_loss = finite(payload.get("val_loss"))
    info.resumable = "train_state" in payload
    return info


def weights_info(path: Path, file: str) -> CheckpointInfo:
    """A safetensors weights file, from its header alone."""
    from ..model.weights import read_records  # noqa: PLC0415 (numpy: `charnn runs` starts without it)

    info = CheckpointInfo(file=file, role="weights", bytes=path.stat().st_size, resumable=False)
    try:
        records = read_records(path).records
    except CharnnError as err:
        info.error = str(err).removeprefix(f"{path}: ")
        return info
    info.step = whole(records.get("step"))
    info.val_loss = finite(records.get("val_loss"))
    return info


def run_checkpoints(run_dir: str | os.PathLike) -> list[CheckpointInfo]:
    """last.pt, best.pt and the kept checkpoints/step-N.pt of a run, each loaded to read its step."""
    run = RunDir(run_dir)
    found = [_checkpoint_info(run.file(name), name, name.removesuffix(".pt")) for name in run.checkpoints()]
    for path in run.kept_checkpoints():
        found.append(_checkpoint_info(path, str(path.relative_to(run.path)), "kept"))
    return found


@dataclass
class RunInfo:
    """Everything `charnn info` shows about a run directory or a checkpoint file."""

    path: Path
    kind: str  # "run", "checkpoint" or "weights" (a .safetensors file)
    model: dict
    train: dict | None
    vocab: dict
    corpus: dict | None
    parameters: int | None
    progress: Progress
    checkpoints: list[CheckpointInfo]
    summary: RunSummary | None = None  # for a run directory
    weights: CheckpointInfo | None = None  # a run's best.safetensors
    init_from: dict | None = None  # the model a run started from (--init-from), as config.json records it

    def __post_init__(self):
        """Each section as a file may hold it, made plain: a dict (or None), its values JSON can write."""
        self.model, self.vocab = plain(section(self.model)), plain(section(self.vocab))
        self.train = plain(self.train) if isinstance(self.train, dict) else None
        self.corpus = plain(self.corpus) if isinstance(self.corpus, dict) else None
        self.init_from = plain(self.init_from) if isinstance(self.init_from, dict) else None
        self.parameters = whole(self.parameters)

    @property
    def vocab_chars(self) -> str | None:
        return text(self.vocab.get("chars")) if self.vocab.get("mode") == "char" else None

    @property
    def vocab_size(self) -> int | None:
        if self.vocab.get("mode") == "byte":
            return 256
        chars = self.vocab.get("chars")
        return len(chars) if isinstance(chars, str) else whole(self.model.get("vocab_size"))

    def to_dict(self) -> dict:
        chars = self.vocab_chars
        return {
            "path": str(self.path),
            "kind": self.kind,
            "status": self.summary.status if self.summary else None,
            "latest": self.summary.latest if self.summary else None,
            "updated": self.summary.to_dict()["updated"] if self.summary else None,
            "model": self.model,
            "train": self.train,
            "vocab": {"mode": self.vocab.get("mode"), "size": self.vocab_size, "chars": chars,
                      "printable": printable_chars(chars) if chars is not None else None},
            "corpus": self.corpus,
            "init_from": self.init_from,
            "parameters": self.parameters,
            "metrics": self.progress.to_dict(),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "weights": self.weights.to_dict() if self.weights else None,
            "problems": list(self.summary.problems) if self.summary else [],
        }


def _info_from_checkpoint(path: Path) -> RunInfo:
    payload = read_checkpoint(path)
    config = config_from_checkpoint(payload)
    return RunInfo(path=path.resolve(), kind="checkpoint", model=config["model"], train=config["train"],
                   vocab=config["vocab"] or {}, corpus=config["corpus"], parameters=config["parameters"],
                   progress=Progress.from_checkpoint(payload),
                   checkpoints=[_checkpoint_info(path, path.name, "checkpoint", payload)])


def _info_from_weights(path: Path) -> RunInfo:
    from ..model.weights import read_records  # noqa: PLC0415

    weights = read_records(path)
    payload = weights.payload()
    return RunInfo(path=path.resolve(), kind="weights", model=payload["model_config"],
                   train=payload.get("train_config"), vocab=payload["vocab"], corpus=payload.get("corpus"),
                   parameters=weights.parameters, progress=Progress.from_checkpoint(payload),
                   checkpoints=[weights_info(path, path.name)])


def run_info(path: str | os.PathLike | None = None) -> RunInfo:
    """A RunInfo of a run directory or checkpoint file (default: the newest run).

    Raises CharnnError for a path that is neither, and for a checkpoint file that is damaged or foreign.
    """
    root_latest = None
    if path is None:
        path = root_latest = latest_run()
    path = Path(path)
    if not path.exists():
        raise CharnnError(f"{path}: no such run directory or checkpoint")
    if path.is_file():
        from ..model.weights import is_weights_file  # noqa: PLC0415

        if is_weights_file(path):
            return _info_from_weights(path)
        return _info_from_checkpoint(path)
    run = RunDir(path).require()
    latest = root_latest.resolve() if root_latest else latest_path(runs_root())
    summary = summarize_run(path, latest=path.resolve() == latest)
    problems = []
    config = config_or_checkpoint(RunDir(path), summary.checkpoints, problems)
    if config is None:
        raise CharnnError(f"{path}: neither config.json nor a checkpoint of this run can be read")
    return RunInfo(path=path.resolve(), kind="run", model=config.get("model") or {}, train=config.get("train"),
                   vocab=config.get("vocab") or {}, corpus=config.get("corpus"), parameters=config.get("parameters"),
                   progress=Progress.from_metrics(read_metrics(RunDir(path).metrics_path)),
                   checkpoints=run_checkpoints(path), summary=summary,
                   weights=weights_info(run.weights, run.WEIGHTS) if run.weights.is_file() else None,
                   init_from=config.get("init_from"))
