"""What training writes in metrics.jsonl, a JSON object a line: a log line ("kind": "train"), an
evaluation ("eval"), a thread-count decision ("threads") and a re-plan ("plan"); and the clock a log
line's speed is measured with."""

from __future__ import annotations

import time

from ..runtime.threads import ThreadChange
from .state import TrainState


class LogClock:
    """The clock of one session of training, and of the current log interval."""

    def __init__(self, elapsed_before: float, chars: int):
        self.session_start = self.log_start = time.monotonic()
        self.elapsed_before, self.log_chars, self.aside = elapsed_before, chars, 0.0

    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.session_start

    def chars_per_sec(self, chars: int) -> float:
        """Training characters per second since the last log line, not counting evaluations and samples."""
        now = time.monotonic()
        rate = (chars - self.log_chars) / max(now - self.log_start - self.aside, 1e-9)
        self.log_start, self.log_chars, self.aside = now, chars, 0.0
        return rate


def train_record(state: TrainState, epochs: float, loss: float, lr: float, chars_per_sec: float,
                 elapsed: float, threads: int) -> dict:
    """A log line of metrics.jsonl: the mean training loss since the previous one, the speed and the
    threads it ran on."""
    return {"kind": "train", "step": state.step, "epoch": round(epochs, 4), "loss": loss, "lr": lr,
            "chars_per_sec": round(chars_per_sec, 1), "chars": state.chars, "elapsed": round(elapsed, 3),
            "threads": threads}


def eval_record(state: TrainState, epochs: float, result, seconds: float, threads: int) -> dict:
    """An evaluation line of metrics.jsonl."""
    return {"kind": "eval", "step": state.step, "epoch": round(epochs, 4), "val_loss": result.loss,
            "val_bpc": result.bpc, "val_chars": result.chars, "best_val_loss": state.best_val_loss,
            "elapsed": round(state.elapsed, 3), "eval_seconds": round(seconds, 3), "threads": threads}


def threads_record(state: TrainState, work: str, change: ThreadChange) -> dict:
    """A line of metrics.jsonl for a thread-count decision: for `work` ("training" or "evaluation")."""
    return {"kind": "threads", "step": state.step, "work": work, **change.to_dict(), "elapsed": round(state.elapsed, 3)}


def plan_record(state: TrainState, plan) -> dict:
    """A line of metrics.jsonl for a re-plan (charnn.plan.planning.Replanner): why, and the new plan. For a
    new model it is the first line, and the steps count from 0 again."""
    return {"kind": "plan", "step": state.step, "elapsed": round(state.elapsed, 3), **(plan.replanned or {}),
            "summary": plan.describe()}
