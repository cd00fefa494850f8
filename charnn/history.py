"""Reading runs back: summaries for `charnn runs`, details for `charnn info`, curves for `charnn plot`.

Everything here reads a run's config.json and metrics.jsonl, which answer almost every question;
a checkpoint is loaded (with `load_checkpoint`, so `weights_only=True`) only when they cannot:
a run without config.json, a bare checkpoint file, or the steps and sizes `info` shows.
Nothing here fails on a half-written run: what cannot be read is reported in `problems`.
"""

from __future__ import annotations

import json
import math
import os
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .corpus import corpus_name
from .errors import CharnnError
from .runs import LATEST_FILE, RUN_FILES, is_run_dir, latest_run, runs_root
from .train import SNAPSHOT_DIR

LN2 = math.log(2.0)
TAIL_BYTES = 1 << 16  # a summary needs only the last records; long runs have megabytes of metrics
CHECKPOINT_NAMES = ("last.pt", "best.pt")


def _finite(value) -> float | None:
    """A float for JSON and tables: None for missing, non-numeric or non-finite values."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _bpc(nats: float | None) -> float | None:
    return None if nats is None else nats / LN2


# --- metrics.jsonl ------------------------------------------------------------------------------


@dataclass
class Metrics:
    """The records of a metrics.jsonl, split by kind, in file (= step) order."""

    train: list[dict] = field(default_factory=list)  # "kind": "train": loss, lr, chars_per_sec, elapsed...
    evals: list[dict] = field(default_factory=list)  # "kind": "eval": val_loss, val_bpc, best_val_loss...
    damaged_lines: int = 0  # lines that are not whole records: a crash mid-write, or one being written now
    partial: bool = False  # only the end of the file was read

    @property
    def last(self) -> dict | None:
        """The record with the highest step (an evaluation wins a tie: it comes after the log line)."""
        candidates = [r for r in (self.last_train, self.last_eval) if r is not None]
        return max(candidates, key=lambda r: (r["step"], r["kind"] == "eval"), default=None)

    @property
    def last_train(self) -> dict | None:
        return self.train[-1] if self.train else None

    @property
    def last_eval(self) -> dict | None:
        return self.evals[-1] if self.evals else None

    @property
    def steps(self) -> int:
        return self.last["step"] if self.last else 0


def _parse_record(line: str) -> dict | None:
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("kind") not in ("train", "eval"):
        return None
    if not isinstance(record.get("step"), int):
        return None
    return record


def read_metrics(path: str | os.PathLike, tail_bytes: int | None = None) -> Metrics:
    """The records of a metrics.jsonl; lines that are not whole records are counted, not fatal.

    With `tail_bytes`, only the end of the file is read (enough for the latest records); a missing
    file reads as no records.
    """
    metrics = Metrics()
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            start = max(0, size - tail_bytes) if tail_bytes else 0
            f.seek(start)
            data = f.read()
    except FileNotFoundError:
        return metrics
    lines = data.decode("utf-8", "replace").split("\n")
    if start > 0:
        lines = lines[1:]  # the first line read is a fragment of a whole one
        metrics.partial = True
    for line in lines:
        if not line.strip():
            continue
        record = _parse_record(line)
        if record is None:
            metrics.damaged_lines += 1
        elif record["kind"] == "train":
            metrics.train.append(record)
        else:
            metrics.evals.append(record)
    return metrics


@dataclass
class Progress:
    """How far a run has got, from its metrics (or, for a bare checkpoint, from the checkpoint)."""

    steps: int = 0
    epochs: float | None = None
    elapsed: float | None = None  # seconds of training, over every session of the run
    evaluations: int | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    last_val_loss: float | None = None
    last_train_loss: float | None = None
    chars_per_sec: float | None = None  # in the last log interval
    chars: int | None = None  # training characters seen

    @property
    def best_val_bpc(self) -> float | None:
        return _bpc(self.best_val_loss)

    @property
    def last_val_bpc(self) -> float | None:
        return _bpc(self.last_val_loss)

    @classmethod
    def from_metrics(cls, metrics: Metrics) -> Progress:
        last, train, evaluation = metrics.last, metrics.last_train, metrics.last_eval
        best = _finite(evaluation.get("best_val_loss")) if evaluation else None
        best_step = None
        if best is not None:  # best.pt was written at the evaluation that reached the best loss
            best_step = next((r["step"] for r in metrics.evals if _finite(r.get("val_loss")) == best), None)
        return cls(
            steps=metrics.steps,
            epochs=_finite(last.get("epoch")) if last else None,
            elapsed=_finite(last.get("elapsed")) if last else None,
            evaluations=None if metrics.partial else len(metrics.evals),
            best_val_loss=best,
            best_step=best_step,
            last_val_loss=_finite(evaluation.get("val_loss")) if evaluation else None,
            last_train_loss=_finite(train.get("loss")) if train else None,
            chars_per_sec=_finite(train.get("chars_per_sec")) if train else None,
            chars=train.get("chars") if train else None,
        )

    @classmethod
    def from_checkpoint(cls, payload: dict) -> Progress:
        """What a checkpoint records: everything for a last.pt, the step and loss for a best.pt."""
        state = (payload.get("train_state") or {}).get("progress") or {}
        step = payload.get("step", state.get("step", 0))
        return cls(
            steps=step if isinstance(step, int) else 0,
            epochs=_finite(state.get("epoch")),
            elapsed=_finite(state.get("elapsed")),
            best_val_loss=_finite(state.get("best_val_loss")),
            last_val_loss=_finite(payload.get("val_loss")),
            chars=state.get("chars"),
        )

    def to_dict(self) -> dict:
        return {
            "steps": self.steps, "epochs": self.epochs, "elapsed": self.elapsed, "evaluations": self.evaluations,
            "best_val_loss": self.best_val_loss, "best_val_bpc": self.best_val_bpc, "best_step": self.best_step,
            "last_val_loss": self.last_val_loss, "last_val_bpc": self.last_val_bpc,
            "last_train_loss": self.last_train_loss, "chars_per_sec": self.chars_per_sec, "chars": self.chars,
        }


# --- one run, cheaply ---------------------------------------------------------------------------


def _read_config(run_dir: Path) -> dict | None:
    try:
        config = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and isinstance(config.get("model"), dict) else None


def _config_from_checkpoint(payload: dict) -> dict:
    """The config.json a run would have, rebuilt from a checkpoint."""
    state = payload["model_state"]
    unique = {t.data_ptr(): t.numel() for t in state.values() if hasattr(t, "data_ptr")}  # tied weights once
    return {
        "model": payload.get("model_config"),
        "train": payload.get("train_config"),
        "vocab": payload.get("vocab"),
        "corpus": payload.get("corpus"),
        "parameters": sum(unique.values()),
    }


def _updated(run_dir: Path) -> datetime | None:
    times = []
    for name in RUN_FILES:
        try:
            times.append((run_dir / name).stat().st_mtime)
        except OSError:
            continue
    return datetime.fromtimestamp(max(times)).astimezone() if times else None


def _describe_corpus(corpus: dict | None) -> str | None:
    sources = (corpus or {}).get("sources")
    if not isinstance(sources, list) or not sources:
        return None
    name = corpus_name([str(s) for s in sources])
    return name if len(sources) == 1 else f"{name} +{len(sources) - 1}"


def _finished(config: dict | None, last: dict | None) -> bool:
    """Whether the run's final evaluation met the limit it was training towards.

    A run that reaches its limit evaluates one last time at that step; one interrupted, killed or
    still training has not reached it (or its last record is a log line).
    """
    if not config or not isinstance(config.get("train"), dict) or not last or last["kind"] != "eval":
        return False
    try:
        train = TrainConfig.from_dict(config["train"])
    except TypeError:
        return False
    step, epoch, elapsed = last["step"], _finite(last.get("epoch")), _finite(last.get("elapsed"))
    if train.max_steps is not None and step >= train.max_steps:
        return True
    if train.max_time is not None and elapsed is not None and elapsed >= train.max_time - 1e-3:
        return True
    return train.stop_epochs is not None and epoch is not None and epoch >= train.stop_epochs - 1e-4


@dataclass
class RunSummary:
    """One line of `charnn runs`: what a run is and how far it got, from config.json and metrics.jsonl."""

    name: str
    path: Path
    corpus: str | None = None  # a short name: the first source's file name (+N more sources)
    cell: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    vocab_size: int | None = None
    parameters: int | None = None
    steps: int = 0
    epochs: float | None = None
    elapsed: float | None = None
    best_val_loss: float | None = None
    last_train_loss: float | None = None
    updated: datetime | None = None  # the newest of the run's files
    latest: bool = False  # what runs/latest names: the default for sample, eval, info and plot
    status: str = "unfinished"  # "finished": its last evaluation met its limit; else "unfinished"
    checkpoints: list[str] = field(default_factory=list)  # last.pt / best.pt, those present
    problems: list[str] = field(default_factory=list)  # what could not be read, in words

    @property
    def best_val_bpc(self) -> float | None:
        return _bpc(self.best_val_loss)

    @property
    def size(self) -> str | None:
        """'2x256 LSTM'."""
        if self.num_layers is None or self.hidden_size is None or self.cell is None:
            return None
        return f"{self.num_layers}x{self.hidden_size} {self.cell.upper()}"

    def to_dict(self) -> dict:
        return {
            "name": self.name, "path": str(self.path), "corpus": self.corpus, "cell": self.cell,
            "num_layers": self.num_layers, "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
            "parameters": self.parameters, "steps": self.steps, "epochs": self.epochs, "elapsed": self.elapsed,
            "best_val_loss": self.best_val_loss, "best_val_bpc": self.best_val_bpc,
            "last_train_loss": self.last_train_loss,
            "updated": self.updated.isoformat(timespec="seconds") if self.updated else None,
            "latest": self.latest, "status": self.status, "checkpoints": list(self.checkpoints),
            "problems": list(self.problems),
        }


def _config_or_checkpoint(run_dir: Path, checkpoints: list[str], problems: list[str]) -> dict | None:
    config = _read_config(run_dir)
    if config is not None:
        return config
    problems.append("config.json missing or unreadable" if (run_dir / "config.json").exists()
                    else "no config.json")
    for name in reversed(checkpoints):  # best.pt is smaller than last.pt: no optimiser state
        try:
            return _config_from_checkpoint(load_checkpoint(run_dir / name))
        except CharnnError:
            problems.append(f"{name} unreadable")
    return None


def summarize_run(run_dir: str | os.PathLike, latest: bool = False) -> RunSummary:
    """A RunSummary of one run directory; never raises for damaged or half-written files."""
    run_dir = Path(run_dir)
    summary = RunSummary(name=run_dir.name, path=run_dir.resolve(), latest=latest, updated=_updated(run_dir))
    summary.checkpoints = [n for n in CHECKPOINT_NAMES if (run_dir / n).is_file()]
    problems = summary.problems
    config = _config_or_checkpoint(run_dir, summary.checkpoints, problems)
    if config is not None:
        model = config.get("model") or {}
        summary.cell, summary.num_layers = model.get("cell"), model.get("num_layers")
        summary.hidden_size, summary.vocab_size = model.get("hidden_size"), model.get("vocab_size")
        summary.parameters = config.get("parameters")
        summary.corpus = _describe_corpus(config.get("corpus"))
    metrics = read_metrics(run_dir / "metrics.jsonl", tail_bytes=TAIL_BYTES)
    if metrics.partial and metrics.last_eval is None:  # no evaluation in the tail: read it all
        metrics = read_metrics(run_dir / "metrics.jsonl")
    if metrics.damaged_lines:
        problems.append(f"metrics.jsonl: {metrics.damaged_lines} incomplete line"
                        f"{'s' if metrics.damaged_lines > 1 else ''} skipped")
    progress = Progress.from_metrics(metrics)
    summary.steps, summary.epochs, summary.elapsed = progress.steps, progress.epochs, progress.elapsed
    summary.best_val_loss, summary.last_train_loss = progress.best_val_loss, progress.last_train_loss
    if not summary.checkpoints:
        problems.append("no checkpoint yet")
    summary.status = "finished" if summary.checkpoints and _finished(config, metrics.last) else "unfinished"
    return summary


# --- every run under a root ---------------------------------------------------------------------


def _latest_path(root: Path) -> Path | None:
    try:
        return latest_run(root).resolve()
    except (CharnnError, OSError):
        return None


def runs_dir(root: str | os.PathLike | None = None) -> Path:
    """The directory `list_runs` reads: `root`, else $CHARNN_RUNS_DIR, else runs/."""
    return Path(root) if root is not None else runs_root()


def list_runs(root: str | os.PathLike | None = None) -> list[RunSummary]:
    """Every run directory directly under `root` (default: the runs root), newest first.

    `latest` marks the run that sample, eval, info and plot use by default (runs/latest of the runs
    root); listing the runs root includes it even when it lives elsewhere (trained with --out).
    Hidden directories (the token cache) are skipped.
    """
    root, default_root = runs_dir(root), runs_root()
    latest = _latest_path(default_root)
    found: dict[Path, Path] = {}
    if root.is_dir():
        for path in sorted(root.iterdir()):
            if not path.name.startswith(".") and path.name != LATEST_FILE and is_run_dir(path):
                found[path.resolve()] = path
    if latest is not None and latest not in found and root.resolve() == default_root.resolve():
        found[latest] = latest
    summaries = [summarize_run(path, latest=resolved == latest) for resolved, path in found.items()]
    summaries.sort(key=lambda s: s.name)
    summaries.sort(key=lambda s: s.updated.timestamp() if s.updated else 0.0, reverse=True)
    return summaries


# --- one run or checkpoint, in full -------------------------------------------------------------


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
        payload = payload if payload is not None else load_checkpoint(path)
    except CharnnError as err:
        info.error = str(err).removeprefix(f"{path}: ")
        return info
    step = payload.get("step")
    info.step = step if isinstance(step, int) else None
    info.val_loss = _finite(payload.get("val_loss"))
    info.resumable = "train_state" in payload
    return info


def run_checkpoints(run_dir: Path) -> list[CheckpointInfo]:
    """last.pt, best.pt and the kept checkpoints/step-N.pt of a run, each loaded to read its step."""
    found = [_checkpoint_info(run_dir / name, name, name.removesuffix(".pt"))
             for name in CHECKPOINT_NAMES if (run_dir / name).is_file()]
    for path in sorted((run_dir / SNAPSHOT_DIR).glob("step-*.pt")):
        found.append(_checkpoint_info(path, f"{SNAPSHOT_DIR}/{path.name}", "kept"))
    return found


def printable_chars(chars: str, space: str = " ") -> str:
    """The vocabulary as one readable line: control and other invisible characters as escapes
    (`\\n`, `\\x1b`, `\\u200b`), a backslash as `\\\\`, and the space as `space`."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\\": "\\\\", "\0": "\\0", " ": space}
    out = []
    for char in chars:
        if char in named:
            out.append(named[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp") or (
                char.isspace() and char != " "):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(char)
    return "".join(out)


@dataclass
class RunInfo:
    """Everything `charnn info` shows about a run directory or a checkpoint file."""

    path: Path
    kind: str  # "run" or "checkpoint"
    model: dict
    train: dict | None
    vocab: dict
    corpus: dict | None
    parameters: int | None
    progress: Progress
    checkpoints: list[CheckpointInfo]
    summary: RunSummary | None = None  # for a run directory

    @property
    def vocab_chars(self) -> str | None:
        return self.vocab.get("chars") if self.vocab.get("mode") == "char" else None

    @property
    def vocab_size(self) -> int | None:
        if self.vocab.get("mode") == "byte":
            return 256
        chars = self.vocab.get("chars")
        return len(chars) if isinstance(chars, str) else self.model.get("vocab_size")

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
            "parameters": self.parameters,
            "metrics": self.progress.to_dict(),
            "checkpoints": [c.to_dict() for c in self.checkpoints],
            "problems": list(self.summary.problems) if self.summary else [],
        }


def _info_from_checkpoint(path: Path) -> RunInfo:
    payload = load_checkpoint(path)
    config = _config_from_checkpoint(payload)
    return RunInfo(path=path.resolve(), kind="checkpoint", model=config["model"], train=config["train"],
                   vocab=config["vocab"] or {}, corpus=config["corpus"], parameters=config["parameters"],
                   progress=Progress.from_checkpoint(payload),
                   checkpoints=[_checkpoint_info(path, path.name, "checkpoint", payload)])


def _is_torch_archive(path: Path) -> bool:
    """torch.save writes a zip archive; anything else (a text file, say) is no checkpoint."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


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
        if not _is_torch_archive(path):
            raise CharnnError(f"{path}: not a checkpoint (charnn checkpoints are torch.save archives)")
        return _info_from_checkpoint(path)
    if not is_run_dir(path):
        raise CharnnError(f"{path}: not a run directory (no config.json, last.pt or best.pt)")
    latest = root_latest.resolve() if root_latest else _latest_path(runs_root())
    summary = summarize_run(path, latest=path.resolve() == latest)
    problems = []
    config = _config_or_checkpoint(path, summary.checkpoints, problems)
    if config is None:
        raise CharnnError(f"{path}: neither config.json nor a checkpoint of this run can be read")
    return RunInfo(path=path.resolve(), kind="run", model=config.get("model") or {}, train=config.get("train"),
                   vocab=config.get("vocab") or {}, corpus=config.get("corpus"), parameters=config.get("parameters"),
                   progress=Progress.from_metrics(read_metrics(path / "metrics.jsonl")),
                   checkpoints=run_checkpoints(path), summary=summary)


# --- loss curves --------------------------------------------------------------------------------


@dataclass
class Series:
    name: str
    xs: list[float]
    ys: list[float]  # loss in nats per character


@dataclass
class LossCurves:
    """What `charnn plot` draws: train and validation loss against steps or elapsed seconds."""

    x: str  # "step" or "time"
    train: Series
    val: Series
    title: str = ""

    @property
    def x_label(self) -> str:
        return "step" if self.x == "step" else "training time"

    @property
    def empty(self) -> bool:
        return not self.train.xs and not self.val.xs


def _points(records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    key = "step" if x == "step" else "elapsed"
    pairs = [(_finite(r.get(key)), _finite(r.get(y))) for r in records]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return [a for a, _ in pairs], [b for _, b in pairs]


def loss_curves(metrics: Metrics, x: str = "step", title: str = "") -> LossCurves:
    """Train loss (each log line: the mean since the previous one) and validation loss, against x."""
    if x not in ("step", "time"):
        raise CharnnError(f"--x must be step or time, not {x!r}")
    return LossCurves(x=x, train=Series("train loss", *_points(metrics.train, x, "loss")),
                      val=Series("validation loss", *_points(metrics.evals, x, "val_loss")), title=title)


def run_metrics_dir(path: str | os.PathLike | None = None) -> Path:
    """The run directory whose metrics to plot: `path` (a checkpoint file means its run) or the newest run."""
    run_dir = latest_run() if path is None else Path(path)
    if not run_dir.exists():
        raise CharnnError(f"{run_dir}: no such run directory")
    if run_dir.is_file():
        run_dir = run_dir.parent
    if not (run_dir / "metrics.jsonl").is_file():
        raise CharnnError(f"{run_dir}: no metrics.jsonl (not a run directory, or training has not logged yet)")
    return run_dir


def plot_title(run_dir: Path) -> str:
    summary = summarize_run(run_dir)
    parts = [p for p in (summary.size, summary.corpus) if p]
    return f"{run_dir.name}" + (f" ({', '.join(parts)})" if parts else "")
