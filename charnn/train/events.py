"""What training tells the outside world: a snapshot of where it is, handed to event hooks.

The trainer calls a `TrainEvents` object (progress bars, logging, tests) with a `TrainSnapshot`,
never with itself, so nothing outside the loop depends on its insides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig, TrainConfig


@dataclass(frozen=True)
class TrainSnapshot:
    """Where training is, and what is being trained."""

    step: int
    epoch: float  # epochs done, as a fraction: 2.5 is halfway through the third epoch
    budget: float  # how much of the nearest limit is used up, 0 to 1
    elapsed: float  # seconds of training, over every session of the run
    model: ModelConfig
    config: TrainConfig
    parameters: int
    device: str
    train_chars: int
    val_chars: int
    run_dir: Path
    threads: int | None = None  # the training step's thread count now

    @property
    def time_left(self) -> float:
        """Seconds until the nearest limit, extrapolated from the time so far (inf before any progress)."""
        if self.budget <= 0:
            return float("inf")
        return self.elapsed * (1 - self.budget) / self.budget


class TrainEvents:
    """Hooks the trainer calls; override the ones you need. All are cheap no-ops by default."""

    def on_plan(self, plan) -> None:
        """Before the run is created: what --size chose (a charnn.plan.sizing.Plan), and why."""

    def on_note(self, message: str) -> None:
        """Before the run starts: advice worth a line (a small corpus could start from a base model)."""

    def on_start(self, snapshot: TrainSnapshot) -> None: ...

    def on_step(self, snapshot: TrainSnapshot) -> None: ...

    def on_log(self, snapshot: TrainSnapshot, record: dict) -> None: ...

    def on_eval(self, snapshot: TrainSnapshot, record: dict) -> None: ...

    def on_save(self, snapshot: TrainSnapshot, path: Path, best: bool) -> None: ...

    def on_warning(self, snapshot: TrainSnapshot, message: str) -> None: ...

    def on_replan(self, snapshot: TrainSnapshot, plan) -> None:
        """After the first minute, the speed seen was far from the planned: the new plan (a sizing.Plan,
        whose `replanned` says why)."""

    def on_threads(self, snapshot: TrainSnapshot, record: dict) -> None:
        """A thread-count decision (charnn.runtime.threads): a "kind": "threads" record of metrics.jsonl."""

    def on_sample(self, snapshot: TrainSnapshot, text: str) -> None: ...


@dataclass
class TrainResult:
    stop_reason: str  # "max_steps", "max_time", "epochs", "patience" or "interrupted"
    state: object  # the TrainState it ended with
    run_dir: Path
    last_eval: dict | None = field(default=None)
    # --overwrite: stopped before the new run had a model, so the old run was put back in its place
    discarded: bool = False
