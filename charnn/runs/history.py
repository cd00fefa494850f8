"""Reading runs back: summaries for `charnn runs`, details for `charnn info`, what `charnn plot` draws.

Everything here reads a run's config.json and metrics.jsonl, which answer almost every question;
a checkpoint is read only when they cannot: a run without config.json, a bare checkpoint or
safetensors file, or the steps and sizes `info` shows. Checkpoints are read without PyTorch
(`charnn.model.archive.peek_checkpoint`: their plain values, no tensor data, nothing executed), and a file
that cannot be read that way is loaded with `load_checkpoint` (`weights_only=True`), which says what
is wrong with it. Nothing here fails on a half-written run: what cannot be read is in `problems`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..data.checked import finite, odd_values, read_model_config, section, text, texts, train_config, whole
from ..data.corpus import corpus_name
from ..errors import CharnnError
from ..model.spec import parameter_count
from ..units import bits
from .metrics import TAIL_BYTES, LossCurves, Progress, loss_curves, read_metrics
from .rundir import RunDir, latest_run, run_dirs, runs_root


# --- one run, cheaply ---------------------------------------------------------------------------


def config_from_checkpoint(payload: dict) -> dict:
    """The config.json a run would have, rebuilt from a checkpoint."""
    return {
        "model": payload.get("model_config"),
        "train": payload.get("train_config"),
        "vocab": payload.get("vocab"),
        "corpus": payload.get("corpus"),
        "parameters": _parameters(payload.get("model_config")),
    }


def _parameters(model_config) -> int | None:
    """The parameter count of a model config read from a file (None: not a model charnn builds)."""
    try:
        return parameter_count(read_model_config(model_config))
    except (CharnnError, TypeError, ValueError, OverflowError):
        return None


def _describe_corpus(corpus) -> str | None:
    sources = texts(section(corpus).get("sources"))
    if not sources:
        return None
    name = corpus_name(sources)
    return name if len(sources) == 1 else f"{name} +{len(sources) - 1}"


def _finished(config: dict | None, last: dict | None, evals: list[dict] = ()) -> bool:
    """Whether the run's final evaluation met the limit it was training towards, or its --patience ran
    out (`evals`: the evaluations read, the last ones at least).

    A run that reaches its limit evaluates one last time at that step; one interrupted, killed or
    still training has not reached it (or its last record is a log line).
    """
    train = train_config(config) if config else None
    if train is None or not last or last["kind"] != "eval":
        return False
    epochs, elapsed = finite(last.get("epoch")), finite(last.get("elapsed"))
    try:
        if train.limit_reached(last["step"], elapsed, epochs, rounded=True) is not None:
            return True
    except OverflowError:  # a limit of 400 digits: float arithmetic refuses it, and no run reached it
        return False
    recent = list(evals)[-train.patience:] if train.patience else []
    return len(recent) == train.patience and all(_worse(r) for r in recent)


def _worse(evaluation: dict) -> bool:
    """Whether an evaluation missed the best loss so far (--patience counts these)."""
    loss, best = finite(evaluation.get("val_loss")), finite(evaluation.get("best_val_loss"))
    return loss is not None and best is not None and loss > best


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
        return None if self.best_val_loss is None else bits(self.best_val_loss)

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


def config_or_checkpoint(run: RunDir, checkpoints: list[str], problems: list[str]) -> dict | None:
    """config.json, else what a checkpoint says; values not as charnn writes them are a problem."""
    config, source = run.read_config(), run.CONFIG
    if config is None:
        problems.append("config.json missing or unreadable" if run.config_path.exists() else "no config.json")
        config, source = _config_from_checkpoints(run, checkpoints, problems)
    odd = odd_values(config) if config is not None else []
    if odd:
        problems.append(f"{source}: {', '.join(odd)} not as charnn writes {'them' if len(odd) > 1 else 'it'}")
    return config


def _config_from_checkpoints(run: RunDir, checkpoints: list[str], problems: list[str]) -> tuple[dict | None, str]:
    for name in reversed(checkpoints):  # best.pt is smaller than last.pt: no optimiser state
        try:
            return config_from_checkpoint(read_checkpoint(run.file(name))), name
        except CharnnError:
            problems.append(f"{name} unreadable")
    return None, ""


def read_checkpoint(path: Path) -> dict:
    """A checkpoint's payload, read without PyTorch where it can be (tensors as their shapes)."""
    from ..model.archive import NotPeekable, peek_checkpoint  # noqa: PLC0415

    try:
        return peek_checkpoint(path)
    except NotPeekable:
        from ..model.checkpoint import load_checkpoint  # noqa: PLC0415 (PyTorch: to say what is wrong, or to load it)

        return load_checkpoint(path)


def summarize_run(run_dir: str | os.PathLike, latest: bool = False) -> RunSummary:
    """A RunSummary of one run directory; never raises for damaged or half-written files."""
    run = RunDir(run_dir)
    summary = RunSummary(name=run.name, path=run.path.resolve(), latest=latest, updated=run.updated())
    summary.checkpoints = run.checkpoints()
    problems = summary.problems
    config = config_or_checkpoint(run, summary.checkpoints, problems)
    if config is not None:
        model = section(config.get("model"))
        summary.cell, summary.num_layers = text(model.get("cell")), whole(model.get("num_layers"))
        summary.hidden_size, summary.vocab_size = whole(model.get("hidden_size")), whole(model.get("vocab_size"))
        summary.parameters = whole(config.get("parameters"))
        summary.corpus = _describe_corpus(config.get("corpus"))
    metrics = read_metrics(run.metrics_path, tail_bytes=TAIL_BYTES)
    if metrics.partial and metrics.last_eval is None:  # no evaluation in the tail: read it all
        metrics = read_metrics(run.metrics_path)
    if metrics.damaged_lines:
        problems.append(f"metrics.jsonl: {metrics.damaged_lines} incomplete line"
                        f"{'s' if metrics.damaged_lines > 1 else ''} skipped")
    progress = Progress.from_metrics(metrics)
    summary.steps, summary.epochs, summary.elapsed = progress.steps, progress.epochs, progress.elapsed
    summary.best_val_loss, summary.last_train_loss = progress.best_val_loss, progress.last_train_loss
    if not summary.checkpoints:
        problems.append("no checkpoint yet")
    finished = summary.checkpoints and _finished(config, metrics.last, metrics.evals)
    summary.status = "finished" if finished else "unfinished"
    return summary


# --- every run under a root ---------------------------------------------------------------------


def latest_path(root: Path) -> Path | None:
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
    latest = latest_path(default_root)
    found = {path.resolve(): path for path in run_dirs(root)}
    if latest is not None and latest not in found and root.resolve() == default_root.resolve():
        found[latest] = latest
    summaries = [summarize_run(path, latest=resolved == latest) for resolved, path in found.items()]
    summaries.sort(key=lambda s: s.name)
    summaries.sort(key=lambda s: s.updated.timestamp() if s.updated else 0.0, reverse=True)
    return summaries


# --- loss curves of a run --------------------------------------------------------------------------------


def run_loss_curves(path: str | os.PathLike | None = None, x: str = "step") -> LossCurves:
    """What `charnn plot` draws for a run directory (a checkpoint file means its run; default: the
    newest run): its loss curves, titled with the run's name, model and corpus."""
    run = RunDir(latest_run() if path is None else path)
    if not run.path.exists():
        raise CharnnError(f"{run.path}: no such run directory")
    if run.path.is_file():
        run = RunDir(run.path.parent)
    if not run.metrics_path.is_file():
        raise CharnnError(f"{run.path}: no metrics.jsonl (not a run directory, or training has not logged yet)")
    summary = summarize_run(run.path)
    parts = [p for p in (summary.size, summary.corpus) if p]
    title = run.name + (f" ({', '.join(parts)})" if parts else "")
    return loss_curves(read_metrics(run.metrics_path), x, title=title)
