"""Where training is, and what a checkpoint must hold to continue it exactly.

`TrainState` counts steps, epochs and evaluations; the random number generators are captured as
plain data (tensors, lists, numbers) so that checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..data.checked import whole
from ..model.checkpoint import save_checkpoint
from ..config import ModelConfig, TrainConfig
from ..errors import CharnnError
from ..data.files import WriteFailed
from ..printable import brief
from ..runs.rundir import RunDir
from ..data.vocab import Vocab
from ..model.weights import weights_from_payload, write_weights


@dataclass
class TrainState:
    """Where training is; saved in every checkpoint so a resumed run continues exactly."""

    step: int = 0  # optimiser steps taken
    epoch: int = 0  # current epoch, from 0
    window: int = 0  # next window within the epoch
    elapsed: float = 0.0  # seconds of training, summed over every session of this run
    chars: int = 0  # training characters seen
    best_val_loss: float = math.inf
    last_val_loss: float | None = None
    last_eval_step: int = -1
    lr_scale: float = 1.0  # lowered by the plateau schedule and by non-finite steps
    plateau_bad_evals: int = 0
    evals_since_best: int = 0  # for --patience
    log_loss_sum: float = 0.0  # train loss summed since the last log line
    log_steps: int = 0

    @classmethod
    def from_dict(cls, data: dict) -> TrainState:
        """A checkpoint's progress; a field of another type (a file may hold anything) is a ValueError."""
        names = {f.name for f in fields(cls)}
        state = cls(**{k: v for k, v in data.items() if k in names})
        for f in fields(cls):
            value = getattr(state, f.name)
            if isinstance(f.default, int):  # steps, epochs, windows and counts
                ok, kind = whole(value) is not None, "a whole number"
            else:  # seconds, losses and scales; a loss not measured yet is None
                ok = (value is None and f.default is None) or _number(value)
                kind = "a number"
            if not ok:
                raise ValueError(f"progress.{f.name} is {brief(value)}, not {kind}")
        return state


def _number(value) -> bool:
    return isinstance(value, float) or whole(value) is not None


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture_rng_state(device: torch.device) -> dict:
    """Every random number generator training touches, as plain data."""
    numpy_state = np.random.get_state(legacy=False)
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "gauss": float(numpy_state["gauss"]),
        },
        "python": _python_rng_to_plain(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _python_rng_to_plain(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def restore_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
        "has_gauss": n["has_gauss"],
        "gauss": n["gauss"],
    })
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def weights_payload(model: torch.nn.Module, model_config: ModelConfig, config: TrainConfig, vocab: Vocab,
                    state: TrainState, corpus: dict | None) -> dict:
    """What every checkpoint holds: the weights (on the CPU), what they are, and how far training got."""
    payload = {
        "model_config": model_config.to_dict(),
        "vocab": vocab.to_dict(),
        "model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "train_config": config.to_dict(),
        "step": state.step,
        "val_loss": state.last_val_loss,
    }
    if corpus is not None:
        payload["corpus"] = corpus
    return payload


def resume_payload(state: TrainState, optimizer: torch.optim.Optimizer, rng: dict, gathered: dict) -> dict:
    """What last.pt adds to resume exactly: progress, optimiser, RNG states and the hidden state
    (`gathered`: the whole batch's, from every process)."""
    return {"progress": asdict(state), "optimizer": optimizer.state_dict(), "rng": rng, **gathered}


class RunWriter:
    """What training writes into its run directory, by one process alone (rank 0): metrics.jsonl
    lines, last.pt and best.pt, and with --keep the last.pt files before; it also says when a save
    is due by --save-every."""

    def __init__(self, run: RunDir, config: TrainConfig, writes: bool = True):
        self.run, self.config, self.writes = run, config, writes
        self.last_time = time.monotonic()
        self.last_step: int | None = None  # the step last.pt holds, if this session has written or read it
        self.claim = None  # the lock on the run directory (charnn.runs.claim.RunClaim), when a caller took one
        self.started = False

    def hold(self, claim) -> None:
        """Keep this claim on the run directory (its lock, and an old run set aside) while training."""
        self.claim = claim

    @property
    def replacing(self) -> bool:
        """An old run is set aside until this one writes its first best.pt."""
        return self.claim is not None and self.claim.replacing

    def abandon_replacement(self) -> bool:
        """If an old run is still set aside, the new one has no model: the old run comes back (True)."""
        if not self.replacing:
            return False
        self.claim.abandon()
        return True

    def release(self) -> None:
        """Let go of the run directory. A new run that never started training (Ctrl-C just before) leaves
        nothing behind, and a run it was to replace comes back."""
        if self.claim is None:
            return
        if self.claim.replacing or (self.claim.fresh and not self.started):
            self.claim.abandon()
        else:
            self.claim.release()

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
        if self.replacing:  # it goes back when training ends
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
        if best and self.claim is not None:
            self.claim.settle()  # the new run has a model: an old run set aside goes now
        if not best:
            self.last_step = step
            self.run.prune_kept(keep)
        return path
