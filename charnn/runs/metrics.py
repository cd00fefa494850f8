"""A run's metrics.jsonl read back: its records, how far the run got, and its loss curves.

Nothing here fails on a half-written file: a line cut short by a crash (or being written now) is
counted, not fatal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..data.checked import finite, section, whole
from ..data.files import is_regular
from ..errors import CharnnError
from ..units import bits

TAIL_BYTES = 1 << 16  # a summary needs only the last records; long runs have megabytes of metrics
# what the records' numbers are called: one of another type (a string, a list) makes its line damaged
NUMBERS = ("epoch", "loss", "lr", "chars_per_sec", "chars", "elapsed", "val_loss", "val_bpc", "val_chars",
           "best_val_loss", "eval_seconds")


def _bpc(nats: float | None) -> float | None:
    return None if nats is None else bits(nats)


@dataclass
class Metrics:
    """The records of a metrics.jsonl, split by kind, in file (= step) order."""

    train: list[dict] = field(default_factory=list)  # "kind": "train": loss, lr, chars_per_sec, elapsed...
    evals: list[dict] = field(default_factory=list)  # "kind": "eval": val_loss, val_bpc, best_val_loss...
    # "kind": "threads" (a thread-count decision) and "plan" (a re-plan): what happened, in step order
    notes: list[dict] = field(default_factory=list)
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


RECORD_KINDS = ("train", "eval", "threads", "plan")


def _parse_record(line: str) -> dict | None:
    """A whole record: a JSON object of a known kind, at a step, whose numbers are numbers (NaN and
    infinity included: a diverged loss is one)."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or record.get("kind") not in RECORD_KINDS or whole(record.get("step")) is None:
        return None
    if not all(_number(record.get(key)) for key in NUMBERS):
        return None
    return record


def _number(value) -> bool:
    return value is None or isinstance(value, float) or whole(value) is not None


def read_metrics(path: str | os.PathLike, tail_bytes: int | None = None) -> Metrics:
    """The records of a metrics.jsonl; lines that are not whole records are counted, not fatal.

    With `tail_bytes`, only the end of the file is read (enough for the latest records); a missing
    file reads as no records.
    """
    metrics = Metrics()
    if os.path.lexists(path) and not is_regular(path):  # a FIFO or a device: never opened (it could wait forever)
        metrics.damaged_lines = 1
        return metrics
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
        elif record["kind"] == "eval":
            metrics.evals.append(record)
        else:
            metrics.notes.append(record)
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
        best = finite(evaluation.get("best_val_loss")) if evaluation else None
        best_step = None
        if best is not None:  # best.pt was written at the evaluation that reached the best loss
            best_step = next((r["step"] for r in metrics.evals if finite(r.get("val_loss")) == best), None)
        return cls(
            steps=metrics.steps,
            epochs=finite(last.get("epoch")) if last else None,
            elapsed=finite(last.get("elapsed")) if last else None,
            evaluations=None if metrics.partial else len(metrics.evals),
            best_val_loss=best,
            best_step=best_step,
            last_val_loss=finite(evaluation.get("val_loss")) if evaluation else None,
            last_train_loss=finite(train.get("loss")) if train else None,
            chars_per_sec=finite(train.get("chars_per_sec")) if train else None,
            chars=whole(train.get("chars")) if train else None,
        )

    @classmethod
    def from_checkpoint(cls, payload: dict) -> Progress:
        """What a checkpoint records: everything for a last.pt, the step and loss for a best.pt."""
        state = section(section(payload.get("train_state")).get("progress"))
        step = whole(payload.get("step", state.get("step", 0)))
        return cls(
            steps=step or 0,
            epochs=finite(state.get("epoch")),
            elapsed=finite(state.get("elapsed")),
            best_val_loss=finite(state.get("best_val_loss")),
            last_val_loss=finite(payload.get("val_loss")),
            chars=whole(state.get("chars")),
        )

    def to_dict(self) -> dict:
        return {
            "steps": self.steps, "epochs": self.epochs, "elapsed": self.elapsed, "evaluations": self.evaluations,
            "best_val_loss": self.best_val_loss, "best_val_bpc": self.best_val_bpc, "best_step": self.best_step,
            "last_val_loss": self.last_val_loss, "last_val_bpc": self.last_val_bpc,
            "last_train_loss": self.last_train_loss, "chars_per_sec": self.chars_per_sec, "chars": self.chars,
        }



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
    pairs = [(finite(r.get(key)), finite(r.get(y))) for r in records]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None]
    return [a for a, _ in pairs], [b for _, b in pairs]


def loss_curves(metrics: Metrics, x: str = "step", title: str = "") -> LossCurves:
    """Train loss (each log line: the mean since the previous one) and validation loss, against x."""
    if x not in ("step", "time"):
        raise CharnnError(f"--x must be step or time, not {x!r}")
    return LossCurves(x=x, train=Series("train loss", *_points(metrics.train, x, "loss")),
                      val=Series("validation loss", *_points(metrics.evals, x, "val_loss")), title=title)
