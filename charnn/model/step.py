"""One optimiser step of truncated BPTT, as training takes it and as the speed timings time it: the
forward pass under the run's precision, the backward pass, clipping and fused AdamW."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..config import TrainConfig
from .network import as_float32
from .precision import Precision


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """AdamW with weight decay on matrices only, fused where this torch and device support it."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    try:
        return torch.optim.AdamW(groups, lr=config.lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=config.lr, foreach=True)


def forward_backward(net: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor, hidden, resets,
                     precision: Precision, scaler=None) -> tuple[torch.Tensor, object]:
    """The forward pass (under the precision's autocast) and the backward pass of one window: the loss,
    in float32, and the final state, in float32 (the state carried to the next window keeps its range)."""
    with precision.autocast(inputs.device):
        logits, hidden = net(inputs, hidden, resets)
    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.reshape(-1))
    (loss if scaler is None else scaler.scale(loss)).backward()
    return loss, as_float32(hidden)


def clip_gradients(model: torch.nn.Module, optimizer: torch.optim.Optimizer, max_norm: float, scaler=None):
    """Clip the global gradient norm to `max_norm` (0: no clipping); the norm before clipping."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm if max_norm > 0 else math.inf)


def optimizer_step(optimizer: torch.optim.Optimizer, scaler=None) -> None:
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
