"""The training loop: truncated, stateful BPTT over contiguous streams.

The Trainer decides which window comes next, at which learning rate, and when to log, evaluate and save;
the `Learner` (charnn.train.learner) takes the steps. The schedule and stop rules are pure functions
(`charnn.train.schedule`), what a checkpoint holds to resume is `charnn.train.state`'s, and the run's files
are written by the `RunWriter` the Trainer is given (charnn.runs.writer): it never sees who claimed the
directory. Everything a person sees happens in a `TrainEvents` object supplied by the caller, which is
handed a `TrainSnapshot` of where training is: the loop itself stays free of any UI.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch

from ..config import ModelConfig, TrainConfig
from ..data.batches import StreamBatches, TrainData, as_tensor, epoch_batches
from ..errors import CharnnError
from ..evaluate.score import EvalResult, evaluate
from ..generate.sampler import preview_text
from ..model.network import CharRNN
from ..model.spec import parameter_count
from ..plan.shapes import Shape
from ..runs.rundir import RunDir
from ..runs.writer import RunWriter
from ..runtime.device import out_of_memory_is_an_error, resolve_device, torch_thread_policy
from ..runtime.memory import TRAIN_HINT as MEMORY_HINT
from ..runtime.threads import ThreadChange, ThreadChoice, ThreadPolicy, TimedUnit
from . import schedule
from .distributed import SingleProcess
from .events import TrainEvents, TrainResult, TrainSnapshot
from .learner import Learner
from .log import LogClock, eval_record, plan_record, threads_record, train_record
from .state import TrainState, capture_rng_state, resume_payload, weights_payload

MAX_BAD_STEPS = 5  # non-finite steps in a row before giving up
SPEED_FROM_STEP = 20  # the first steps pay for allocation: the speed a re-plan compares starts after them


def resolve_precision(model_config: ModelConfig, config: TrainConfig, device: torch.device) -> tuple[str, str]:
    """The precision `config.precision` means for this model on `device` (auto: timed), and why."""
    from ..plan.speed import choose_precision  # noqa: PLC0415 (timing: only for auto)

    return choose_precision(config.precision, Shape.of(model_config, config), model_config.vocab_size, device)


@dataclass(frozen=True)
class TrainHooks:
    """How training talks to its surroundings: progress events, a stop request, the process group."""

    events: TrainEvents | None = None
    should_stop: Callable[[], str | None] | None = None
    group: SingleProcess = field(default_factory=SingleProcess)
    threads: ThreadChoice | None = None  # None: charnn.runtime.threads' choice from the environment


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


class Validation:
    """The validation text as a run scores it: all of it, or on a big corpus `eval_chars` of it in pieces
    spread over its length (the same every time), with a thread policy of its own (scoring gains from
    threads otherwise than training steps do)."""

    def __init__(self, tokens: torch.Tensor, threads: ThreadPolicy):
        self.tokens, self.threads = tokens, threads

    def score(self, model: CharRNN, eval_chars: int | None) -> tuple[EvalResult, list[ThreadChange]]:
        """The model's score, and the thread-count decisions made while scoring."""
        decided = len(self.threads.changes)
        return evaluate(model, self.tokens, threads=self.threads, sample=eval_chars), self.threads.changes[decided:]


class ReplanCheck:
    """Once, after the first minute of a run planned for a time: the plan made again if the training speed
    seen is far from the planned (`replanner` decides: charnn.plan.planning.Replanner; the trainer applies)."""

    def __init__(self, replanner=None):
        self.replanner, self.seconds, self.chars = replanner, 0.0, 0

    def saw(self, step: int, seconds: float, chars: int, probing: bool = False) -> None:
        """A training step timed; the first steps pay for allocation, and a thread probe's units try other
        counts than the run goes on at: neither counts."""
        if step >= SPEED_FROM_STEP and not probing:
            self.seconds += seconds
            self.chars += chars

    def decide(self, elapsed: float):
        """The new plan (a `Replan`), if one is due and called for; the replanner is asked once, after a step
        has been timed."""
        if self.replanner is None or not self.replanner.due(elapsed) or self.seconds <= 0:
            return None
        replanner, self.replanner = self.replanner, None
        return replanner.decide(elapsed, self.chars / self.seconds)


class Trainer:
    """Trains `data` into a model of `model_config`, writing to `out`: a `RunWriter` (a `RunSession`'s), or
    a run directory's path, written by rank 0. It only trains: who may write the directory is not its
    business."""

    def __init__(self, model_config: ModelConfig, config: TrainConfig, data: TrainData, out: RunWriter | str | Path,
                 hooks: TrainHooks | None = None):
        hooks = hooks or TrainHooks()
        self.model_config = model_config.validate()
        self.config = config.validate()
        self.data, self.vocab = data, data.vocab
        self.group, threads = hooks.group, hooks.threads
        self.writer = out if isinstance(out, RunWriter) else RunWriter(RunDir(out), config, self.group.is_main)
        self.rundir = self.writer.run
        self.run_dir = self.rundir.path
        self.events = hooks.events or TrainEvents()
        self.should_stop = hooks.should_stop or (lambda: None)
        self._streams = self.group.streams(config.batch_size)  # this process's share of the global batch
        self.device = self.group.join(resolve_device(config.device))
        # training steps and evaluation windows differ in what they gain from threads: a policy each
        self.threads, scoring = torch_thread_policy(self.device, threads), torch_thread_policy(self.device, threads)
        if config.precision == "auto":  # a library caller's config; a run resolves it before (charnn.train.start)
            self.config = config = replace(config, precision=resolve_precision(model_config, config, self.device)[0])
        self.learner = Learner(model_config, config, self.device, self._streams, self.group)
        self.parameters = parameter_count(model_config)
        self.state = TrainState()
        self.train_data = as_tensor(data.train, self.device)
        self.validation = Validation(as_tensor(data.val, self.device), scoring)
        self._batches = self._epoch_batches(0)
        self._bad_steps = _BadSteps(self.rundir)
        self._last_eval: dict | None = None
        self.replanning = ReplanCheck()  # a run planned for a time budget may be planned again (charnn.train.start)
        # what should_stop said, and whether --save-every's clock says to save: agreed on by every process
        self._stop_request, self._clock_save_due = None, False

    def restore(self, payload: dict) -> None:
        """Continue from a checkpoint written by `save` (the whole state, not just the weights)."""
        train = payload.get("train_state")
        if train is None:
            raise CharnnError("checkpoint has no training state to resume from (it is a best.pt or weights-only file)")
        self.learner.restore(payload, self.group, self.device)
        self.state = TrainState.from_dict(train["progress"])
        self.learner.loss_sum = torch.tensor(self.state.log_loss_sum, device=self.device)
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

    @property
    def model(self) -> CharRNN:
        return self.learner.model

    def snapshot(self) -> TrainSnapshot:
        s = self.state
        return TrainSnapshot(step=s.step, epoch=self.epoch_progress, budget=self.budget_fraction(), elapsed=s.elapsed,
                             model=self.model_config, config=self.config, parameters=self.parameters,
                             device=self.device.type, train_chars=len(self.train_data),
                             val_chars=len(self.validation.tokens), run_dir=self.rundir.path, threads=self.threads.threads)

    # --- the step ------------------------------------------------------------------------

    def train_step(self, inputs: torch.Tensor, targets: torch.Tensor,
                   resets: torch.Tensor | None = None) -> torch.Tensor | None:
        """One optimiser step on one window; returns the loss, or None if the step was skipped. A non-finite
        loss or gradient is skipped: in fp16 it is the gradient scaler's business (it lowers its scale) until
        the scale falls below 1; otherwise the learning rate halves."""
        loss = self.learner.step(inputs, targets, resets)
        if loss is not None:
            self._bad_steps.count = 0
            return loss
        if self.learner.scaler_absorbs():
            return None
        self.state.lr_scale *= 0.5
        self.events.on_warning(self.snapshot(), f"step {self.state.step + 1}: non-finite loss or gradient; "
                                                "step skipped, learning rate halved")
        self._bad_steps.add()
        return None

    # --- the loop ------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until a stop condition; running out of memory ends in a CharnnError, last.pt untouched."""
        with out_of_memory_is_an_error(self._where_memory_ran_out, MEMORY_HINT):
            return self._run()

    def release(self) -> None:
        """Let go of DDP's wrapper, while the process group is alive (at exit, gloo's threads may abort)."""
        self.learner.unwrap(self.group)

    def _where_memory_ran_out(self) -> str:
        kept = f"; the last good checkpoint is {self.rundir.last}" if self.rundir.last.is_file() else ""
        return f"on {self.device} at step {self.state.step + 1}{kept}"

    def _run(self) -> TrainResult:
        self.writer.start()
        self.learner.wrap(self.group)
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
        self.state.next_epoch()
        self.learner.hidden = None  # the streams restart elsewhere: old memory would be wrong context
        self._batches = self._epoch_batches(self.state.epoch)

    def _train_window(self) -> bool:
        """One window of every stream; False if its step was skipped (non-finite)."""
        inputs, targets = self._batches.window(self.state.window)
        inputs, targets = self.group.local(inputs), self.group.local(targets)
        self.learner.lr = schedule.learning_rate(self.config, self.state.step, self.budget_fraction(), self.state.lr_scale)
        resets = self._batches.resets(self.state.window, inputs, self.model_config.reset_ids, self._streams)
        probing = self.threads.probing
        with TimedUnit(self.threads, inputs.numel()) as unit:
            loss = self.train_step(inputs, targets, resets)
        if unit.change is not None:
            self._threads_changed("training", unit.change)
        self.replanning.saw(self.state.step, unit.seconds, inputs.numel(), probing)
        self.state.window_done(None if loss is None else inputs.numel() * self.group.world_size)
        return loss is not None

    def _after_step(self, timing: LogClock) -> None:
        """The cadence: log, sample, evaluate and save when their turn comes."""
        self.events.on_step(self.snapshot())
        step, config = self.state.step, self.config
        if step % config.log_every == 0:
            self._log(chars_per_sec=timing.chars_per_sec(self.state.chars), elapsed=timing.elapsed())
        if config.sample_every and step % config.sample_every == 0 and self.group.is_main:
            started = time.monotonic()  # a sample from the model as it is now, which leaves training as it was
            sample = preview_text(self.model, self.vocab, config.sample_chars, seed=config.seed + step)
            self.events.on_sample(self.snapshot(), sample)
            timing.aside += time.monotonic() - started
        if step % config.eval_every == 0:
            started = time.monotonic()
            self._evaluate_and_save()
            timing.aside += time.monotonic() - started
        elif self._clock_save_due or self.writer.due_by_steps(step):
            self.save()
        replan = self.replanning.decide(self.state.elapsed)
        if replan is not None:
            self._replan(replan, timing)

    def _replan(self, replan, timing: LogClock) -> None:
        """A new plan: a new model trained from its first step, or the same model for another number of steps."""
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
        self.learner = Learner(model_config, config, self.device, self._streams, self.group)
        self.parameters = parameter_count(model_config)
        self.state = TrainState(elapsed=self.state.elapsed)
        self._last_eval = None
        self._batches = self._epoch_batches(0)

    def _sync_clock_and_requests(self, elapsed: float) -> None:
        """Time, a stop request (Ctrl-C, SIGTERM) and a save that is due by the clock, agreed by every process:
        the schedule follows the clock, so all processes must read the same time to stay identical."""
        request = self.should_stop()
        agreed = self.group.agree_max([elapsed, float(request is not None), float(self.writer.due_by_clock())], self.device)
        self.state.elapsed, stop, save = agreed
        self._stop_request, self._clock_save_due = request or ("interrupted" if stop else None), bool(save)

    # --- logging, evaluation and saving -------------------------------------------------

    def _log(self, chars_per_sec: float, elapsed: float) -> None:
        s = self.state
        loss = float(self.group.mean(self.learner.loss_sum)) / max(s.log_steps, 1)
        record = train_record(s, self.epoch_progress, loss, self.learner.lr, chars_per_sec, elapsed,
                              self.threads.threads)
        self.learner.loss_sum.zero_()
        s.log_steps = 0
        self.writer.append_metrics(record)
        self.events.on_log(self.snapshot(), record)

    def evaluate(self) -> EvalResult:
        """Score the validation text (`Validation`)."""
        result, changes = self.validation.score(self.model, self.config.eval_chars)
        for change in changes:
            self._threads_changed("evaluation", change)
        return result

    def _threads_changed(self, work: str, change: ThreadChange) -> None:
        record = threads_record(self.state, work, change)
        self.writer.append_metrics(record)
        self.events.on_threads(self.snapshot(), record)

    def _evaluate_and_save(self) -> None:
        started = time.monotonic()
        result = self.group.on_main(self.evaluate)  # rank 0 scores; the others take its figure, so all decide alike
        improved = result.loss < self.state.best_val_loss
        self.state = schedule.after_evaluation(self.config, self.state, result.loss)
        record = eval_record(self.state, self.epoch_progress, result, time.monotonic() - started,
                             self.validation.threads.threads)
        self._last_eval = record
        self.writer.append_metrics(record)
        self.events.on_eval(self.snapshot(), record)
        if improved:
            self.save(best=True)
        self.save()

    def save(self, best: bool = False) -> Path:
        """Write best.pt (weights for sampling) or last.pt (everything needed to resume: every process must call
        it, as it gathers their hidden and RNG states)."""
        payload = weights_payload(self.model, self.model_config, self.config, self.vocab, self.state, self.data.corpus)
        if not best:
            self.state.log_loss_sum = float(self.group.mean(self.learner.loss_sum))
            rng = capture_rng_state(self.device)
            gathered = self.group.gather_state(self.learner.hidden_list(), rng, self.device)
            payload["train_state"] = resume_payload(self.state, rng, self.learner.training_state(gathered))
        path = self.writer.write_checkpoint(payload, self.state.step, best)
        if self.writer.writes:
            self.events.on_save(self.snapshot(), path, best)
        return path
