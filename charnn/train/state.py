"""Where training is, and what a checkpoint must hold to continue it exactly.

`TrainState` counts steps, epochs and evaluations; the random number generators are captured as
plain data (tensors, lists, numbers) so that checkpoints load with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..data.checked import whole
from ..data.vocab import Vocab
from ..printable import brief


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

    def window_done(self, chars: int | None) -> None:
        """A window of `chars` training characters read (over every process); None: its step was skipped."""
        self.window += 1
        if chars is not None:
            self.step += 1
            self.chars += chars
            self.log_steps += 1

    def next_epoch(self) -> None:
        self.epoch += 1
        self.window = 0

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


def resume_payload(state: TrainState, rng: dict, learner: dict) -> dict:
    """What last.pt adds to resume exactly: progress, RNG states, and the learner's optimiser, scaler and
    hidden state (the whole batch's, from every process: `Learner.training_state`)."""
    return {"progress": asdict(state), "rng": rng, **learner}
