"""The model being trained and what its steps change: the optimiser (and fp16's gradient scaler), the
precision of the forward pass, and the hidden state carried from window to window (truncated BPTT).

The `Trainer` decides which window comes next, at which learning rate, and what a skipped step means for
the run; a `Learner` takes the step, and saves and restores what it holds for a checkpoint.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig, TrainConfig
from ..model.network import CharRNN, detach_hidden, hidden_from_list, hidden_to_list
from ..model.precision import Precision
from ..model.spec import training_bytes
from ..model.step import clip_gradients, forward_backward, make_optimizer, optimizer_step
from ..runtime.device import out_of_memory_is_an_error
from ..runtime.memory import TRAIN_HINT, require_memory
from .distributed import SingleProcess
from .state import seed_everything


def build_model(model_config: ModelConfig, config: TrainConfig, device: torch.device, streams: slice) -> CharRNN:
    """The seeded model on `device` (the same on every process), once training it is known to fit."""
    share = len(range(config.batch_size)[streams])
    require_memory(training_bytes(model_config, share, config.seq_len), "building the model and training it",
                   str(device), TRAIN_HINT)
    seed_everything(config.seed)
    with out_of_memory_is_an_error(f"building the model on {device}", TRAIN_HINT):
        return CharRNN(model_config).to(device)


class Learner:
    """A model of `model_config` on `device`, trained on this process's `streams` of the batch."""

    def __init__(self, model_config: ModelConfig, config: TrainConfig, device: torch.device, streams: slice,
                 group: SingleProcess):
        self.precision = Precision(config.precision)
        self.model = build_model(model_config, config, device, streams)
        group.reseed(config.seed)
        self.net = self.model  # what a step calls: DDP's wrapper once training starts on several processes
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = self.precision.scaler(device)  # fp16 only
        self.hidden = None  # carried from window to window
        self.loss_sum = torch.zeros((), device=device)  # the training loss since the last log line, on the device
        self.grad_clip, self.carry_state = config.grad_clip, config.carry_state

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def step(self, inputs: torch.Tensor, targets: torch.Tensor, resets: torch.Tensor | None) -> torch.Tensor | None:
        """One optimiser step on one window; the loss, or None if the loss or gradient was not finite (the
        step is skipped, and the carried state dropped)."""
        hidden = self.hidden if self.carry_state else None
        self.optimizer.zero_grad(set_to_none=True)
        loss, hidden = forward_backward(self.net, inputs, targets, hidden, resets, self.precision, self.scaler)
        norm = clip_gradients(self.model, self.optimizer, self.grad_clip, self.scaler)
        if not bool(torch.isfinite(norm)):
            self.hidden = None
            return None
        optimizer_step(self.optimizer, self.scaler)
        self.hidden = detach_hidden(hidden)
        loss = loss.detach()
        self.loss_sum += loss  # summed where it is: no sync per step
        return loss

    def scaler_absorbs(self) -> bool:
        """Whether fp16's gradient scaler takes a skipped step on itself (it lowers its scale), which it does
        while the scale stays at 1 or more; without a scaler, a skipped step is the trainer's to answer."""
        if self.scaler is None:
            return False
        self.scaler.update()
        return self.scaler.get_scale() >= 1.0

    def wrap(self, group: SingleProcess) -> None:
        """Steps go through the process group's wrapper (DDP averages the gradients)."""
        if self.net is self.model:
            self.net = group.wrap(self.model)

    def unwrap(self, group: SingleProcess) -> None:
        if self.net is not self.model:
            self.net = self.model
            group.release()

    def training_state(self, gathered: dict) -> dict:
        """What last.pt holds of it to resume: the optimiser, the scaler, and (`gathered` from every process
        by the caller, as `hidden_list` gives them) the whole batch's hidden state."""
        state = {"optimizer": self.optimizer.state_dict(), **gathered}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def hidden_list(self) -> list[torch.Tensor]:
        return hidden_to_list(self.hidden)

    def restore(self, payload: dict, group: SingleProcess, device: torch.device) -> None:
        """Back to what a last.pt holds: the weights, the optimiser, the scaler, this process's hidden state."""
        train = payload["train_state"]
        self.model.load_state_dict(payload["model_state"])
        self.optimizer.load_state_dict(train["optimizer"])
        if self.scaler is not None and train.get("scaler"):
            self.scaler.load_state_dict(train["scaler"])
        hidden = hidden_from_list(train.get("hidden", []), self.model.config.cell, device)
        self.hidden = group.own_streams(hidden)  # saved for the whole batch
