"""The training loop: truncated, stateful BPTT over contiguous streams.

The Trainer owns the model, optimiser, schedule, data position and hidden
state, and writes the run directory's metrics.jsonl, last.pt and best.pt.
Everything a person sees (progress bars, messages) happens in a `TrainEvents`
object supplied by the caller, so the loop itself stays free of any UI.
"""

from __future__ import annotations

import gc
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import atomic_write, keep_copy, save_checkpoint
from .config import ModelConfig, TrainConfig
from .data import StreamBatches, as_tensor, epoch_offset
from .device import out_of_memory_is_an_error, resolve_device
from .distributed import (SINGLE, Ranks, agree_max, broadcast_object, gather_objects, gather_streams,
                          mean_over_ranks)
from .distributed import start as start_distributed
from .errors import CharnnError
from .evaluate import evaluate
from .model import CharRNN, detach_hidden, hidden_from_list, hidden_to_list, reset_mask, select_streams
from .sampling import default_prime, generate
from .vocab import Vocab

MAX_BAD_STEPS = 5  # non-finite steps in a row before giving up
PLATEAU_PATIENCE = 2  # evaluations without improvement before the plateau schedule halves the rate
PLATEAU_FACTOR = 0.5
MEMORY_HINT = "reduce --batch-size, --seq-len, --hidden-size or --layers, or train on another --device"
SNAPSHOT_DIR = "checkpoints"  # where --keep puts earlier checkpoints


class TrainEvents:
    """Hooks the trainer calls; override the ones you need. All are cheap no-ops by default."""

    def on_start(self, trainer: Trainer) -> None: ...

    def on_step(self, trainer: Trainer) -> None: ...

    def on_log(self, trainer: Trainer, record: dict) -> None: ...

    def on_eval(self, trainer: Trainer, record: dict) -> None: ...

    def on_save(self, trainer: Trainer, path: Path, best: bool) -> None: ...

    def on_warning(self, trainer: Trainer, message: str) -> None: ...

    def on_sample(self, trainer: Trainer, text: str) -> None: ...


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


@dataclass
class TrainResult:
    stop_reason: str  # "max_steps", "max_time", "epochs", "patience" or "interrupted"
    state: TrainState
    run_dir: Path
    last_eval: dict | None = field(default=None)


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


class Trainer:
    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        vocab: Vocab,
        train_tokens: np.ndarray,
        val_tokens: np.ndarray,
        run_dir: str | Path,
        events: TrainEvents | None = None,
        should_stop: Callable[[], str | None] | None = None,
        extra: dict | None = None,
        ranks: Ranks = SINGLE,
    ):
        self.model_config = model_config.validate()
        self.config = config.validate()
        self.vocab = vocab
        self.run_dir = Path(run_dir)
        self.events = events or TrainEvents()
        self.should_stop = should_stop or (lambda: None)
        self.extra = extra or {}  # plain data saved with every checkpoint (e.g. the corpus fingerprint)
        self.ranks = ranks
        self._streams = ranks.streams(config.batch_size)  # this rank's share of the global batch
        self.device = start_distributed(ranks, resolve_device(config.device))

        torch.manual_seed(config.seed)
        np.random.seed(config.seed % 2**32)
        random.seed(config.seed)
        with out_of_memory_is_an_error(f"building the model on {self.device}", MEMORY_HINT):
            self.model = CharRNN(model_config).to(self.device)  # the same on every rank: same seed
        if ranks.rank:  # rank 0 draws what a single process would; the others their own dropout masks
            torch.manual_seed(config.seed + ranks.rank)
        self.net = self.model  # what the training step calls: DDP's wrapper once `run` starts on several ranks
        self.optimizer = make_optimizer(self.model, config)
        self.state = TrainState()
        self.hidden = None
        self.train_data = as_tensor(train_tokens, self.device)
        self.val_data = as_tensor(val_tokens, self.device)
        self._batches = self._epoch_batches(0)
        self._bad_steps = 0
        self._loss_sum = torch.zeros((), device=self.device)  # summed on the device: no sync per step
        self._last_save_time = time.monotonic()
        self._last_saved_step: int | None = None  # the step last.pt holds, if this run has written one
        self._last_eval: dict | None = None
        self._stop_request: str | None = None  # what should_stop said, agreed on by every rank
        self._clock_save_due = False  # --save-every by time, agreed on by every rank

    # --- resume ------------------------------------------------------------------------

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint written by `save` (the whole state, not just the weights)."""
        train = payload.get("train_state")
        if train is None:
            raise CharnnError("checkpoint has no training state to resume from (it is a best.pt or weights-only file)")
        self.model.load_state_dict(payload["model_state"])
        self.optimizer.load_state_dict(train["optimizer"])
        known = {k: v for k, v in train["progress"].items() if k in TrainState.__dataclass_fields__}
        self.state = TrainState(**known)
        self._loss_sum = torch.tensor(self.state.log_loss_sum, device=self.device)
        hidden = hidden_from_list(train.get("hidden", []), self.model_config.cell, self.device)
        if hidden is not None and self.ranks.active:  # saved for the whole batch: keep this rank's streams
            hidden = select_streams(hidden, self._streams)
        self.hidden = hidden
        by_rank = train.get("rng_by_rank") or []
        if len(by_rank) == self.ranks.world_size:  # the same ranks as before: each continues its own numbers
            restore_rng_state(by_rank[self.ranks.rank], self.device)
        else:
            restore_rng_state(train["rng"], self.device)
            if self.ranks.rank:  # a different number of ranks cannot continue exactly; stay distinct and seeded
                torch.manual_seed(self.config.seed + self.ranks.rank + 7919 * self.state.step)
        self._batches = self._epoch_batches(self.state.epoch)
        self._last_saved_step = self.state.step
        self._forget_metrics_after(self.state.step)

    # --- the loop ----------------------------------------------------------------------

    def _epoch_batches(self, epoch: int) -> StreamBatches:
        c = self.config
        batches = StreamBatches(self.train_data, c.batch_size, c.seq_len, epoch_offset(c.seed, epoch, c.seq_len))
        if len(batches) == 0:  # a corpus just one window long has no room to shift the streams
            batches = StreamBatches(self.train_data, c.batch_size, c.seq_len, 0)
        return batches

    @property
    def epoch_progress(self) -> float:
        """Epochs done, as a fraction: 2.5 is halfway through the third epoch."""
        return self.state.epoch + self.state.window / max(len(self._batches), 1)

    def budget_fraction(self) -> float:
        """How much of the nearest stop condition is used up, from 0 to 1; drives the cosine schedule."""
        c, s = self.config, self.state
        fractions = [0.0]
        if c.max_steps is not None:
            fractions.append(s.step / c.max_steps)
        if c.max_time is not None:
            fractions.append(s.elapsed / c.max_time)
        if c.stop_epochs is not None:
            fractions.append(self.epoch_progress / c.stop_epochs)
        return min(1.0, max(fractions))

    def learning_rate(self) -> float:
        c, s = self.config, self.state
        warmup = min(1.0, (s.step + 1) / c.warmup_steps) if c.warmup_steps else 1.0
        if c.schedule == "cosine":
            decay = c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * self.budget_fraction()))
        else:  # "plateau" lowers lr_scale at evaluations; "constant" never does
            decay = 1.0
        return c.lr * warmup * decay * s.lr_scale

    def stop_reason(self) -> str | None:
        c, s = self.config, self.state
        if c.max_steps is not None and s.step >= c.max_steps:
            return "max_steps"
        if c.max_time is not None and s.elapsed >= c.max_time:
            return "max_time"
        if c.stop_epochs is not None and self.epoch_progress >= c.stop_epochs - 1e-9:
            return "epochs"
        if c.patience is not None and s.evals_since_best >= c.patience:
            return "patience"
        return self._stop_request

    def window_resets(self, k: int, inputs: torch.Tensor) -> torch.Tensor | None:
        """With --reset-on: where in window k the state restarts (the delimiter may begin in window k-1)."""
        ids = self.model_config.reset_ids
        if not ids:
            return None
        return reset_mask(inputs, ids, self._batches.lookbehind(k, len(ids) - 1)[:, self._streams])

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor,
                   resets: torch.Tensor | None = None) -> torch.Tensor | None:
        """One optimiser step on one window; returns the loss, or None if the step was skipped."""
        model, config = self.model, self.config
        hidden = self.hidden if config.carry_state else None
        logits, hidden = self.net(inputs, hidden, resets)
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        max_norm = config.grad_clip if config.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        if not bool(torch.isfinite(norm)):
            self._skip_bad_step()
            return None
        self._bad_steps = 0
        self.optimizer.step()
        self.hidden = detach_hidden(hidden)
        return loss.detach()

    def _skip_bad_step(self) -> None:
        self._bad_steps += 1
        self.hidden = None
        self.state.lr_scale *= 0.5
        self.events.on_warning(
            self, f"step {self.state.step + 1}: non-finite loss or gradient; step skipped, learning rate halved"
        )
        if self._bad_steps >= MAX_BAD_STEPS:
            raise CharnnError(
                f"training diverged: {MAX_BAD_STEPS} non-finite steps in a row; "
                f"the last good checkpoint is {self.run_dir / 'last.pt'}",
                hint="lower --lr or --grad-clip",
            )

    def run(self) -> TrainResult:
        """Train until a stop condition; running out of memory ends in a CharnnError, last.pt untouched."""
        with out_of_memory_is_an_error(self._where_memory_ran_out, MEMORY_HINT):
            return self._run()

    def release(self) -> None:
        """Drop the DDP wrapper (and the gradient communication it holds) while the process group and
        the interpreter are still alive: left to the interpreter's exit, gloo's threads may abort it."""
        if self.net is not self.model:
            self.net = self.model
            gc.collect()  # the wrapper and its reducer refer to each other

    def _where_memory_ran_out(self) -> str:
        last = self.run_dir / "last.pt"
        kept = f"; the last good checkpoint is {last}" if last.is_file() else ""
        return f"on {self.device} at step {self.state.step + 1}{kept}"

    def _run(self) -> TrainResult:
        if self.ranks.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.ranks.active and self.net is self.model:
            from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415 (only with several ranks)

            # averages the gradients over the ranks during backward, overlapping with the computation
            self.net = DistributedDataParallel(self.model, device_ids=[self.device] if self.device.type == "cuda"
                                               else None)
        self.model.train()
        self.events.on_start(self)
        session_start = time.monotonic()
        elapsed_before = self.state.elapsed
        log_start_time, log_start_chars = session_start, self.state.chars
        eval_seconds = 0.0
        reason = None
        while True:
            self._sync_clock_and_requests(elapsed_before + time.monotonic() - session_start)
            reason = self.stop_reason()
            if reason:
                break
            if self.state.window >= len(self._batches):
                self.state.epoch += 1
                self.state.window = 0
                self.hidden = None  # the streams restart elsewhere: old memory would be wrong context
                self._batches = self._epoch_batches(self.state.epoch)
                continue
            inputs, targets = self._batches.window(self.state.window)
            if self.ranks.active:
                inputs, targets = inputs[:, self._streams], targets[:, self._streams]
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
            loss = self.train_step(inputs, targets, self.window_resets(self.state.window, inputs))
            self.state.window += 1
            if loss is None:
                continue
            self.state.step += 1
            self.state.chars += inputs.numel() * self.ranks.world_size
            self._loss_sum += loss
            self.state.log_steps += 1
            self.events.on_step(self)
            step = self.state.step
            if step % self.config.log_every == 0:
                now = time.monotonic()
                train_seconds = max(now - log_start_time - eval_seconds, 1e-9)
                self._log(chars_per_sec=(self.state.chars - log_start_chars) / train_seconds,
                          elapsed=elapsed_before + now - session_start)
                log_start_time, log_start_chars, eval_seconds = now, self.state.chars, 0.0
            if self.config.sample_every and step % self.config.sample_every == 0 and self.ranks.is_main:
                t0 = time.monotonic()
                self.events.on_sample(self, self.sample_text())
                eval_seconds += time.monotonic() - t0
            if step % self.config.eval_every == 0:
                t0 = time.monotonic()
                self._evaluate_and_save()
                eval_seconds += time.monotonic() - t0
            elif self._save_due:
                self.save()
        if reason != "interrupted" and self.state.last_eval_step != self.state.step:
            self._evaluate_and_save()
        else:
            self.save()
        return TrainResult(stop_reason=reason, state=self.state, run_dir=self.run_dir, last_eval=self._last_eval)

    # --- logging, evaluation and saving -------------------------------------------------

    def _sync_clock_and_requests(self, elapsed: float) -> None:
        """Time, a stop request (Ctrl-C, SIGTERM) and a save that is due by the clock, agreed by every rank:
        the schedule follows the clock, so all ranks must read the same time to stay identical."""
        request = self.should_stop()
        c = self.config
        save_due = (c.save_every_seconds is not None
                    and time.monotonic() - self._last_save_time >= c.save_every_seconds)
        if self.ranks.active:
            elapsed, stop, save = agree_max([elapsed, float(request is not None), float(save_due)], self.device)
            request = request or ("interrupted" if stop else None)
            save_due = bool(save)
        self.state.elapsed = elapsed
        self._stop_request = request
        self._clock_save_due = save_due

    def _forget_metrics_after(self, step: int) -> None:
        """Drop log lines written after the checkpoint we resume from: that stretch is trained again."""
        path = self.run_dir / "metrics.jsonl"
        if not self.ranks.is_main or not path.is_file():
            return
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a crash
        if len(kept) != len(lines):
            atomic_write(path, lambda f: f.write("".join(k + "\n" for k in kept).encode("utf-8")))

    def _append_metrics(self, record: dict) -> None:
        if not self.ranks.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _log(self, chars_per_sec: float, elapsed: float) -> None:
        s = self.state
        record = {
            "kind": "train",
            "step": s.step,
            "epoch": round(self.epoch_progress, 4),
            "loss": float(self._ranks_mean(self._loss_sum)) / max(s.log_steps, 1),
            "lr": self.optimizer.param_groups[0]["lr"],
            "chars_per_sec": round(chars_per_sec, 1),
            "chars": s.chars,
            "elapsed": round(elapsed, 3),
        }
        self._loss_sum.zero_()
        s.log_steps = 0
        self._append_metrics(record)
        self.events.on_log(self, record)

    def evaluate(self):
        """Score the validation text: all of it, or its first --eval-chars on a big corpus."""
        limit = self.config.eval_chars
        return evaluate(self.model, self.val_data if limit is None else self.val_data[: limit + 1])

    def sample_text(self) -> str:
        """A short sample from the model as it is now (--sample-every). Its random numbers come from a
        generator of its own, and dropout is off, so training goes on exactly as without it."""
        prime = default_prime(self.vocab, self.model_config.reset_ids)
        try:
            steps = list(generate(self.model, prime, self.config.sample_chars, seed=self.config.seed + self.state.step))
        finally:
            self.model.train()
        return self.vocab.decode(np.concatenate(steps))

    def _ranks_mean(self, value: torch.Tensor) -> torch.Tensor:
        return mean_over_ranks(value) if self.ranks.active else value

    def _evaluate_and_save(self) -> None:
        s = self.state
        started = time.monotonic()
        if self.ranks.active:  # rank 0 scores; the others wait for its figure, so all decide alike
            result = broadcast_object(self.evaluate() if self.ranks.is_main else None)
        else:
            result = self.evaluate()
        improved = result.loss < s.best_val_loss
        s.evals_since_best = 0 if improved else s.evals_since_best + 1
        if improved:
            s.best_val_loss = result.loss
            s.plateau_bad_evals = 0
        elif self.config.schedule == "plateau":
            s.plateau_bad_evals += 1
            if s.plateau_bad_evals >= PLATEAU_PATIENCE:
                s.lr_scale *= PLATEAU_FACTOR
                s.plateau_bad_evals = 0
        s.last_val_loss = result.loss
        s.last_eval_step = s.step
        record = {
            "kind": "eval",
            "step": s.step,
            "epoch": round(self.epoch_progress, 4),
            "val_loss": result.loss,
            "val_bpc": result.bpc,
            "val_chars": result.chars,
            "best_val_loss": s.best_val_loss,
            "elapsed": round(s.elapsed, 3),
            "eval_seconds": round(time.monotonic() - started, 3),
        }
        self._last_eval = record
        self._append_metrics(record)
        self.events.on_eval(self, record)
        if improved:
            self.save(best=True)
        self.save()

    @property
    def _save_due(self) -> bool:
        c = self.config
        if c.save_every_steps is not None and self.state.step % c.save_every_steps == 0:
            return True
        return self._clock_save_due

    def checkpoint_payload(self, with_training_state: bool = True) -> dict:
        model_state = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        payload = {
            "model_config": self.model_config.to_dict(),
            "vocab": self.vocab.to_dict(),
            "model_state": model_state,
            "train_config": self.config.to_dict(),
            "step": self.state.step,
            "val_loss": self.state.last_val_loss,
            **self.extra,
        }
        if with_training_state:
            self.state.log_loss_sum = float(self._ranks_mean(self._loss_sum))
            hidden, rng = hidden_to_list(self.hidden), capture_rng_state(self.device)
            payload["train_state"] = {
                "progress": asdict(self.state),
                "optimizer": self.optimizer.state_dict(),
                "rng": rng,
                "hidden": hidden,
            }
            if self.ranks.active:  # the whole batch's state, so a resume may use another number of ranks
                payload["train_state"]["hidden"] = [t.cpu() for t in gather_streams([t.to(self.device) for t in hidden])]
                payload["train_state"]["rng_by_rank"] = gather_objects(rng)
        return payload

    def save(self, best: bool = False) -> Path:
        """Write best.pt (weights for sampling) or last.pt (everything needed to resume)."""
        path = self.run_dir / ("best.pt" if best else "last.pt")
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise CharnnError(f"training diverged: the weights became non-finite at step {self.state.step}; "
                              f"{path} was not overwritten", hint="lower --lr or --grad-clip")
        payload = self.checkpoint_payload(with_training_state=not best)  # every rank: it gathers their state
        if not best:
            self._last_save_time = time.monotonic()
        if not self.ranks.is_main:
            return path
        if not best:
            self._keep_previous(path)
        save_checkpoint(path, payload)
        if not best:
            self._last_saved_step = self.state.step
            self._prune_kept()
        self.events.on_save(self, path, best)
        return path

    def _keep_previous(self, last: Path) -> None:
        """With --keep, the last.pt about to be replaced moves into checkpoints/ first."""
        previous = self._last_saved_step
        if self.config.keep <= 0 or previous is None or previous == self.state.step or not last.is_file():
            return
        (self.run_dir / SNAPSHOT_DIR).mkdir(exist_ok=True)
        keep_copy(last, self.run_dir / SNAPSHOT_DIR / f"step-{previous:09d}.pt")

    def _prune_kept(self) -> None:
        directory = self.run_dir / SNAPSHOT_DIR
        if not directory.is_dir():
            return
        kept = sorted(directory.glob("step-*.pt"))  # zero-padded: name order is step order
        for old in kept[: max(len(kept) - self.config.keep, 0)]:
            old.unlink(missing_ok=True)

