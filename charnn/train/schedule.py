"""The learning-rate schedule and the stop rules: pure functions of the configuration and the progress.

The trainer applies them step by step; `charnn runs` applies the same limits (`TrainConfig.limit_reached`)
to a run's metrics to tell a finished run from an interrupted one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING

from ..config import TrainConfig

if TYPE_CHECKING:
    from .state import TrainState

PLATEAU_PATIENCE = 2  # evaluations without improvement before the plateau schedule halves the rate
PLATEAU_FACTOR = 0.5


def budget_fraction(config: TrainConfig, step: int, elapsed: float, epochs: float) -> float:
    """How much of the nearest limit is used up, from 0 to 1; it drives the cosine schedule."""
    fractions = [0.0]
    if config.max_steps is not None:
        fractions.append(step / config.max_steps)
    if config.max_time is not None:
        fractions.append(elapsed / config.max_time)
    if config.stop_epochs is not None:
        fractions.append(epochs / config.stop_epochs)
    return min(1.0, max(fractions))


def learning_rate(config: TrainConfig, step: int, fraction: float, lr_scale: float = 1.0) -> float:
    """Linear warm-up, then cosine decay over the budget (or flat: 'plateau' lowers lr_scale instead)."""
    warmup = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
    decay = 1.0
    if config.schedule == "cosine":
        decay = config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * fraction))
    return config.lr * warmup * decay * lr_scale


def stop_reason(config: TrainConfig, state: TrainState, epochs: float) -> str | None:
    """Why training should stop now: a limit, or --patience run out."""
    reached = config.limit_reached(state.step, state.elapsed, epochs)
    if reached:
        return reached
    if config.patience is not None and state.evals_since_best >= config.patience:
        return "patience"
    return None


def after_evaluation(config: TrainConfig, state: TrainState, loss: float) -> TrainState:
    """The state after an evaluation scored `loss`: the best so far, --patience's count, and the
    plateau schedule's rate (halved after PLATEAU_PATIENCE evaluations without a new best)."""
    if loss < state.best_val_loss:
        return replace(state, best_val_loss=loss, evals_since_best=0, plateau_bad_evals=0,
                       last_val_loss=loss, last_eval_step=state.step)
    changes = {"evals_since_best": state.evals_since_best + 1, "last_val_loss": loss, "last_eval_step": state.step}
    if config.schedule == "plateau":
        bad = state.plateau_bad_evals + 1
        if bad >= PLATEAU_PATIENCE:
            changes.update(lr_scale=state.lr_scale * PLATEAU_FACTOR, plateau_bad_evals=0)
        else:
            changes["plateau_bad_evals"] = bad
    return replace(state, **changes)
