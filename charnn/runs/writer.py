"""What training writes into its run directory: metrics lines, checkpoints, config.json as plans change.

One process writes (rank 0); a disk that refuses a write ends training with what is saved and says how to
go on. The writer is what a `Trainer` is given to write to (charnn.train.trainer); the claim on the
directory stays with the `RunSession` that made the writer (charnn.runs.session).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from ..config import TrainConfig
from ..data.files import WriteFailed
from ..errors import CharnnError
from ..model.checkpoint import save_checkpoint
from ..model.weights import weights_from_payload, write_weights
from .rundir import RunDir


class RunWriter:
    """What training writes into its run directory, by one process alone (rank 0): metrics.jsonl
    lines, last.pt and best.pt, and with --keep the last.pt files before; it also says when a save
    is due by --save-every. Who may write the directory is not its business: a `RunSession` that made
    it hears of the first best.pt (`on_best`), and answers whether an old run waits to come back."""

    def __init__(self, run: RunDir, config: TrainConfig, writes: bool = True,
                 on_best: Callable[[], None] | None = None, old_run_waits: Callable[[], bool] | None = None):
        self.run, self.config, self.writes = run, config, writes
        self.on_best = on_best or (lambda: None)
        self.old_run_waits = old_run_waits or (lambda: False)
        self.last_time = time.monotonic()
        self.last_step: int | None = None  # the step last.pt holds, if this session has written or read it
        self.started = False

    def start(self) -> None:
        self.started = True
        if self.writes:
            self.run.path.mkdir(parents=True, exist_ok=True)

    def resumed_at(self, step: int) -> None:
        """Training continues from last.pt's `step`: what was logged after it is trained again."""
        self.last_step = step
        if self.writes:
            self.run.cut_metrics_after(step)

    def replanned(self, sections: dict, record: dict, new_model: bool) -> None:
        """The run's plan changed after its first minute (charnn.plan.planning.Replanner): config.json gets the
        new `sections` (model, train, sizing, parameters); with a `new_model` the first model's files go.
        `record` begins the metrics anew."""
        self.config = TrainConfig.from_dict(sections["train"])
        if not self.writes:
            return
        if new_model:
            self.run.forget_model()
            self.last_step = None
        config = self.run.read_config() or {}
        with self._writing():
            self.run.write_config({k: v for k, v in {**config, **sections}.items()
                                   if k not in ("format", "format_version")})
            self.run.append_metrics(record)

    def append_metrics(self, record: dict) -> None:
        if self.writes:
            with self._writing():
                self.run.append_metrics(record)

    @contextmanager
    def _writing(self):
        """A write the disk refuses ends training with what is saved, and says how to go on from it."""
        try:
            yield
        except WriteFailed as err:
            if err.no_room:
                err.hint = self._after_a_full_disk()
            raise

    def _after_a_full_disk(self) -> str:
        if self.old_run_waits():  # it goes back when training ends
            return f"free some space and train again; {self.run.path} holds the run it held before"
        if self.run.last.is_file():
            at = f", at step {self.last_step:,}" if self.last_step is not None else ""
            return f"free some space, then `charnn train --resume {self.run.path}` continues from its last.pt{at}"
        return f"free some space and train again: {self.run.path} has no last.pt yet (--overwrite replaces it)"

    def due_by_clock(self) -> bool:
        seconds = self.config.save_every_seconds
        return seconds is not None and time.monotonic() - self.last_time >= seconds

    def due_by_steps(self, step: int) -> bool:
        every = self.config.save_every_steps
        return every is not None and step % every == 0

    def write_checkpoint(self, payload: dict, step: int, best: bool) -> Path:
        """Save best.pt (and best.safetensors) or last.pt atomically; with --keep, the last.pt it replaces
        moves to checkpoints/."""
        path = self.run.best if best else self.run.last
        if not all(bool(torch.isfinite(t).all()) for t in payload["model_state"].values()):
            raise CharnnError(f"training diverged: the weights became non-finite at step {step}; "
                              f"{path} was not overwritten", hint="lower --lr or --grad-clip")
        if not best:
            self.last_time = time.monotonic()
        if not self.writes:
            return path
        keep = self.config.keep
        with self._writing():
            if not best and keep > 0 and self.last_step is not None and self.last_step != step:
                self.run.keep_last(self.last_step)
            save_checkpoint(path, payload)
            if best:  # the same weights without pickle, for sampling without PyTorch
                write_weights(self.run.weights, weights_from_payload(payload))
        if best:
            self.on_best()  # the run has a model: an old run set aside goes now
        if not best:
            self.last_step = step
            self.run.prune_kept(keep)
        return path
