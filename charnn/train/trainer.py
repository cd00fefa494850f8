"""The training loop: truncated, stateful BPTT over contiguous streams.

The Trainer owns the model, optimiser, data position and hidden state; it runs the loop, the step
and the evaluation cadence. The schedule and stop rules are pure functions (`charnn.train.schedule`), the
run's files belong to its `RunDir`, and what a checkpoint holds to resume is `charnn.train.state`'s.
Everything a person sees happens in a `TrainEvents` object supplied by the caller, which is handed
a `TrainSnapshot` of where training is: the loop itself stays free of any UI.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from . import schedule
from ..config import ModelConfig, TrainConfig
from ..data.batches import StreamBatches, TrainData, as_tensor, epoch_batches
from ..runtime.device import out_of_memory_is_an_error, resolve_device, torch_thread_policy
from .distributed import SingleProcess
from ..errors import CharnnError
from ..evaluate.score import evaluate
from .events import TrainEvents, TrainResult, TrainSnapshot
from ..runtime.memory import TRAIN_HINT as MEMORY_HINT
from ..runtime.memory import require_memory
from ..model.network import CharRNN, detach_hidden, hidden_from_list, hidden_to_list
from ..model.precision import Precision
from ..model.spec import parameter_count, training_bytes
from ..plan.shapes import Shape
from ..model.step import clip_gradients, forward_backward, make_optimizer, optimizer_step
from ..runs.rundir import RunDir
from ..generate.sampler import preview_text
from ..runtime.threads import ThreadChange, ThreadChoice, TimedUnit
from .log import LogClock, eval_record, plan_record, threads_record, train_record
from .state import RunWriter, TrainState, capture_rng_state, resume_payload, seed_everything, weights_payload

MAX_BAD_STEPS = 5  # non-finite steps in a row before giving up
SPEED_FROM_STEP = 20  # the first steps pay for allocation: the speed a re-plan compares starts after them


def resolve_precision(model_config: ModelConfig, config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """The precision `config.precision` means for this model on `device` (auto: timed), and why."""
    from ..plan.speed import choose_precision  # noqa: PLC0415 (timing: only for auto)

    return choose_precision(config.precision, Shape.of(model_config, config), model_config.vocab_size, device)


class _BadSteps:
    """Non-finite steps in a row: each is skipped at half the learning rate; MAX_BAD_STEPS end training."""

    def __init__(self, run: RunDir):
        self.run, self.count = run, 0

    def add(self) -> None:
        """Count a skipped step; a CharnnError once there are too many in a row."""
        self.count += 1
        if self.count >= MAX_BAD_STEPS:
            kept = f"the last good checkpoint is {self.run.last}" if self.run.last.is_file() else "no checkpoint written"
            raise CharnnError(f"training diverged: {MAX_BAD_STEPS} non-finite steps in a row; {kept}",
                              hint="lower --lr or --grad-clip")


def build_model(model_config: ModelConfig, config: TrainConfig, device: torch.device, streams: slice) -> CharRNN:
    """The seeded model on `device` (the same on every process), once training it is known to fit."""
    share = len(range(config.batch_size)[streams])
    require_memory(training_bytes(model_config, share, config.seq_len), "building the model and training it", str(device),
                   MEMORY_HINT)
    seed_everything(config.seed)
    with out_of_memory_is_an_error(f"building the model on {device}", MEMORY_HINT):
        return CharRNN(model_config).to(device)


class Trainer:
    """Trains `data` into a model of `model_config`, writing the run directory `run_dir` (rank 0 only)."""

    def __init__(self, model_config: ModelConfig, config: TrainConfig, data: TrainData, run_dir: str | Path,
                 events: TrainEvents | None = None, should_stop: Callable[[], str | None] | None = None,
                 group: SingleProcess | None = None, threads: ThreadChoice | None = None):
        self.model_config = model_config.validate()
        self.config = config.validate()
        self.data, self.vocab = data, data.vocab
        self.rundir = RunDir(run_dir)
        self.run_dir = self.rundir.path
        self.events = events or TrainEvents()
        self.should_stop = should_stop or (lambda: None)
        self.group = group or SingleProcess()
        self._streams = self.group.streams(config.batch_size)  # this process's share of the global batch
        self.device = self.group.join(resolve_device(config.device))
        # training steps and evaluation windows differ in what they gain from threads: a policy each
        self.threads = torch_thread_policy(self.device, threads)
        self.eval_threads = torch_thread_policy(self.device, threads)
        if config.precision == "auto":  # a library caller's config; a run resolves it before (charnn.train.start)
            self.config = config = replace(config, precision=resolve_precision(model_config, config, self.device)[0])
        self.precision = Precision(config.precision)

        self.model = build_model(model_config, config, self.device, self._streams)
        self.parameters = parameter_count(model_config)
        self.group.reseed(config.seed)
        self.net = self.model  # what the training step calls: DDP's wrapper once `run` starts on several processes
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = self.precision.scaler(self.device)  # fp16 only
        self.state = TrainState()
        self.hidden = None
        self.train_data = as_tensor(data.train, self.device)
        self.val_data = as_tensor(data.val, self.device)
        self._batches = self._epoch_batches(0)
        self._bad_steps = _BadSteps(self.rundir)
        self._loss_sum = torch.zeros((), device=self.device)  # summed on the device: no sync per step
        self.writer = RunWriter(self.rundir, config, writes=self.group.is_main)
        self._last_eval: dict | None = None
        # a run planned for a time budget may be planned again after its first minute (charnn.plan.planning)
        self.replanner = None
        self._seen = [0.0, 0]  # seconds and characters of the training steps from SPEED_FROM_STEP on
        # what should_stop said, and whether --save-every's clock says to save: agreed on by every process
        self._stop_request, self._clock_save_due = None, False

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint written by `save` (the whole state, not just the weights)."""
        train = payload.get("train_state")
        if train is None:
            raise CharnnError("checkpoint has no training state to resume from (it is a best.pt or weights-only file)")
        self.model.load_state_dict(payload["model_state"])
        self.optimizer.load_state_dict(train["optimizer"])
        if self.scaler is not None and train.get("scaler"):
            self.scaler.load_state_dict(train["scaler"])
        self.state = TrainState.from_dict(train["progress"])
        self._loss_sum = torch.tensor(self.state.log_loss_sum, device=self.device)
        hidden = hidden_from_list(train.get("hidden", []), self.model_config.cell, self.device)
        self.hidden = self.group.own_streams(hidden)  # saved for the whole batch
        self.group.restore_rng(train, self.device, self.config.seed)
        self._batches = self._epoch_batches(self.state.epoch)
        self.writer.resumed_at(self.state.step)

    def _epoch_batches(self, epoch: int) -> StreamBatches:
        c = self.config
        return epoch_batches(self.train_data, c.batch_size, c.seq_len, c.seed, epoch)

    @property
    def epoch_progress(self) -> float:
        """Epochs done, as a fraction: 2.5 is halfway through the third epoch."""
        return self.state.epoch + self.state.window / max(len(self._batches), 1)

    def budget_fraction(self) -> float:
        return schedule.budget_fraction(self.config, self.state.step, self.state.elapsed, self.epoch_progress)

    def snapshot(self) -> TrainSnapshot:
        s = self.state
        return TrainSnapshot(step=s.step, epoch=self.epoch_progress, budget=self.budget_fraction(), elapsed=s.elapsed,
                             model=self.model_config, config=self.config, parameters=self.parameters,
                             device=self.device.type, train_chars=len(self.train_data),
                             val_chars=len(self.val_data), run_dir=self.rundir.path, threads=self.threads.threads)

    # --- the step ------------------------------------------------------------------------

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor,
                   resets: torch.Tensor | None = None) -> torch.Tensor | None:
        """One optimiser step on one window; returns the loss, or None if the step was skipped."""
        config = self.config
        hidden = self.hidden if config.carry_state else None
        self.optimizer.zero_grad(set_to_none=True)
        loss, hidden = forward_backward(self.net, inputs, targets, hidden, resets, self.precision, self.scaler)
        norm = clip_gradients(self.model, self.optimizer, config.grad_clip, self.scaler)
        if not bool(torch.isfinite(norm)):
            return self._skip_step()
        self._bad_steps.count = 0
        optimizer_step(self.optimizer, self.scaler)
        self.hidden = detach_hidden(hidden)
        return loss.detach()

    def _skip_step(self) -> None:
        """A non-finite loss or gradient: the step is skipped. In fp16 that is the gradient scaler's
        business (it lowers its scale) until the scale falls below 1; otherwise the learning rate halves."""
        self.hidden = None
        if self.scaler is not None:
            self.scaler.update()
            if self.scaler.get_scale() >= 1.0:
                return None
        self.state.lr_scale *= 0.5
        self.events.on_warning(self.snapshot(), f"step {self.state.step + 1}: non-finite loss or gradient; "
                                                "step skipped, learning rate halved")
        self._bad_steps.add()
        return None

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until a stop condition; running out of memory ends in a CharnnError, last.pt untouched.
        A run replacing another (--overwrite) that stops before its first best.pt puts the old one back."""
        try:
            with out_of_memory_is_an_error(self._where_memory_ran_out, MEMORY_HINT):
                result = self._run()
            result.discarded = self.writer.abandon_replacement()
            return result
        except BaseException:
            self.writer.abandon_replacement()
            raise
        finally:
            self.writer.release()

    def release(self) -> None:
        """Let go of the run's lock and of DDP's wrapper, while the process group is alive (at exit, gloo's
        threads may abort)."""
        self.writer.release()
        if self.net is not self.model:
            self.net = self.model
            self.group.release()

    def _where_memory_ran_out(self) -> str:
        kept = f"; the last good checkpoint is {self.rundir.last}" if self.rundir.last.is_file() else ""
        return f"on {self.device} at step {self.state.step + 1}{kept}"

    def _run(self) -> TrainResult:
        self.writer.start()
        self.net = self.group.wrap(self.model) if self.net is self.model else self.net
        self.model.train()
        self.events.on_start(self.snapshot())
        timing = LogClock(self.state.elapsed, self.state.chars)
        while True:
            self._sync_clock_and_requests(timing.elapsed())
            reason = schedule.stop_reason(self.config, self.state, self.epoch_progress) or self._stop_request
            if reason:
                break
            if self.state.window >= len(self._batches):
                self._next_epoch()
                continue
            if self._train_window():
                self._after_step(timing)
        if reason != "interrupted" and self.state.last_eval_step != self.state.step:
            self._evaluate_and_save()
        else:
            self.save()
        return TrainResult(stop_reason=reason, state=self.state, run_dir=self.rundir.path, last_eval=self._last_eval)

    def _next_epoch(self) -> None:
        self.state.epoch += 1
        self.state.window = 0
        self.hidden = None  # the streams restart elsewhere: old memory would be wrong context
        self._batches = self._epoch_batches(self.state.epoch)

    def _train_window(self) -> bool:
        """One window of every stream; False if its step was skipped (non-finite)."""
        inputs, targets = self._batches.window(self.state.window)
        inputs, targets = self.group.local(inputs), self.group.local(targets)
        lr = schedule.learning_rate(self.config, self.state.step, self.budget_fraction(), self.state.lr_scale)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        resets = self._batches.resets(self.state.window, inputs, self.model_config.reset_ids, self._streams)
        with TimedUnit(self.threads, inputs.numel()) as unit:
            loss = self.train_step(inputs, targets, resets)
        if unit.change is not None:
            self._threads_changed("training", unit.change)
        if self.state.step >= SPEED_FROM_STEP:
            self._seen[0] += unit.seconds
            self._seen[1] += inputs.numel()
        self.state.window += 1
        if loss is None:
            return False
        self.state.step += 1
        self.state.chars += inputs.numel() * self.group.world_size
        self._loss_sum += loss
        self.state.log_steps += 1
        return True

    def _after_step(self, timing: LogClock) -> None:
        """The cadence: log, sample, evaluate and save when their turn comes."""
        self.events.on_step(self.snapshot())
        step, config = self.state.step, self.config
        if step % config.log_every == 0:
            self._log(chars_per_sec=timing.chars_per_sec(self.state.chars), elapsed=timing.elapsed())
        if config.sample_every and step % config.sample_every == 0 and self.group.is_main:
            started = time.monotonic()
            self.events.on_sample(self.snapshot(), self.sample_text())
            timing.aside += time.monotonic() - started
        if step % config.eval_every == 0:
            started = time.monotonic()
            self._evaluate_and_save()
            timing.aside += time.monotonic() - started
        elif self._clock_save_due or self.writer.due_by_steps(step):
            self.save()
        if self.replanner is not None and self.replanner.due(self.state.elapsed):
            self._consider_replan(timing)

    def _consider_replan(self, timing: LogClock) -> None:
        """Once, after the first minute: the plan made again if the speed seen is far from the planned."""
        seconds, chars = self._seen
        if seconds <= 0:
            return  # no step timed yet: ask again after the next
        replanner, self.replanner = self.replanner, None
        replan = replanner.decide(self.state.elapsed, chars / seconds)
        if replan is None:
            return
        c = self.config
        new_model = (replan.model_config, replan.config.batch_size, replan.config.seq_len) != (
            self.model_config, c.batch_size, c.seq_len)
        if new_model:
            self._restart(replan.model_config, replan.config)
            timing.log_start, timing.log_chars, timing.aside = time.monotonic(), 0, 0.0
        else:  # the same model: only the steps the default budget gives it change
            self.config = replace(c, max_steps=replan.config.max_steps)
        sections = {"model": self.model_config.to_dict(), "train": self.config.to_dict(),
                    "sizing": replan.plan.to_dict(), "parameters": self.parameters}
        self.writer.replanned(sections, plan_record(self.state, replan.plan), new_model)
        self.events.on_replan(self.snapshot(), replan.plan)

    def _restart(self, model_config: ModelConfig, config: TrainConfig) -> None:
        """Train a new model from its first step, the time spent on the old one counted as spent."""
        self.model_config, self.config = model_config.validate(), config.validate()
        self.model = self.net = build_model(model_config, config, self.device, self._streams)
        self.parameters = parameter_count(model_config)
        self.optimizer = make_optimizer(self.model, config)
        self.scaler = self.precision.scaler(self.device)
        self.state = TrainState(elapsed=self.state.elapsed)
        self.hidden, self._last_eval = None, None
        self._batches = self._epoch_batches(0)
        self._loss_sum.zero_()

    def _sync_clock_and_requests(self, elapsed: float) -> None:
        """Time, a stop request (Ctrl-C, SIGTERM) and a save that is due by the clock, agreed by every process:
        the schedule follows the clock, so all processes must read the same time to stay identical."""
        request = self.should_stop()
        save_due = self.writer.due_by_clock()
        elapsed, stop, save = self.group.agree_max([elapsed, float(request is not None), float(save_due)], self.device)
        self.state.elapsed = elapsed
        self._stop_request = request or ("interrupted" if stop else None)
        self._clock_save_due = bool(save)

    # --- logging, evaluation and saving -------------------------------------------------

    def _log(self, chars_per_sec: float, elapsed: float) -> None:
        s = self.state
        loss = float(self.group.mean(self._loss_sum)) / max(s.log_steps, 1)
        record = train_record(s, self.epoch_progress, loss, self.optimizer.param_groups[0]["lr"], chars_per_sec,
                              elapsed, self.threads.threads)
        self._loss_sum.zero_()
        s.log_steps = 0
        self.writer.append_metrics(record)
        self.events.on_log(self.snapshot(), record)

    def evaluate(self):
        """Score the validation text: all of it, or its first --eval-chars on a big corpus."""
        limit = self.config.eval_chars
        changes = len(self.eval_threads.changes)
        result = evaluate(self.model, self.val_data if limit is None else self.val_data[: limit + 1],
                          threads=self.eval_threads)
        for change in self.eval_threads.changes[changes:]:
            self._threads_changed("evaluation", change)
        return result

    def _threads_changed(self, work: str, change: ThreadChange) -> None:
        record = threads_record(self.state, work, change)
        self.writer.append_metrics(record)
        self.events.on_threads(self.snapshot(), record)

    def sample_text(self) -> str:
        """A short sample from the model as it is now (--sample-every), which leaves training as it was."""
        return preview_text(self.model, self.vocab, self.config.sample_chars, seed=self.config.seed + self.state.step)

    def _evaluate_and_save(self) -> None:
        started = time.monotonic()
        result = self.group.on_main(self.evaluate)  # rank 0 scores; the others take its figure, so all decide alike
        improved = result.loss < self.state.best_val_loss
        self.state = schedule.after_evaluation(self.config, self.state, result.loss)
        record = eval_record(self.state, self.epoch_progress, result, time.monotonic() - started,
                             self.eval_threads.threads)
        self._last_eval = record
        self.writer.append_metrics(record)
        self.events.on_eval(self.snapshot(), record)
        if improved:
            self.save(best=True)
        self.save()

    def checkpoint_payload(self, with_training_state: bool = True) -> dict:
        """best.pt's weights payload, or with the training state, last.pt's (every process must call it:
        it gathers their hidden and RNG states)."""
        payload = weights_payload(self.model, self.model_config, self.config, self.vocab, self.state,
                                  self.data.corpus)
        if with_training_state:
            self.state.log_loss_sum = float(self.group.mean(self._loss_sum))
            rng = capture_rng_state(self.device)
            gathered = self.group.gather_state(hidden_to_list(self.hidden), rng, self.device)
            payload["train_state"] = resume_payload(self.state, self.optimizer, rng, gathered)
            if self.scaler is not None:
                payload["train_state"]["scaler"] = self.scaler.state_dict()
        return payload

    def save(self, best: bool = False) -> Path:
        """Write best.pt (weights for sampling) or last.pt (everything needed to resume)."""
        payload = self.checkpoint_payload(with_training_state=not best)
        path = self.writer.write_checkpoint(payload, self.state.step, best)
        if self.writer.writes:
            self.events.on_save(self.snapshot(), path, best)
        return path
