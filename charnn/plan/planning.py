"""A run's plan before it starts: what `--size` chooses on this device, and `--dry-run`'s plan, which
reads the corpus but trains nothing and writes nothing (but the speeds it timed, charnn.plan.memory).

charnn.plan.sizing holds the rule; this module gathers what the rule needs (the corpus's size, the limits
and options the user gave, the device's speed, timed here within TIMING_SHARE of the budget).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from typing import BinaryIO, Callable

from ..config import ModelConfig, TrainConfig
from ..data.batches import check_split_sizes
from ..data.corpus import corpus_files
from ..data.tokens import cache_dir
from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.precision import MIN_GAIN, check_precision, mixed_candidate
from ..model.spec import training_bytes
from ..runtime.device import resolve_device
from ..runs.rundir import runs_root
from ..runtime.memory import TRAIN_HINT, require_memory
from ..runtime.threads import ThreadChoice, resolve_threads
from . import sizing
from .pretrained import SUGGESTED_BASE, fine_tuning_request, open_init, suggests_base, union_vocab
from .request import TrainRequest, check_request
from .memory import SpeedMemory
from .speed import MeasuredSpeeds

TIMING_SHARE = 0.02  # of the budget, at most, goes into timing shapes before choosing
CHECKS = 2  # rounds of timing the shapes a choice turns on and choosing again
CLOSE_CALLS = 2  # more timings when the mixed precision's gain is within 10% of MIN_GAIN


REPLAN_AFTER = 60.0  # seconds of training before the speed seen is compared with the planned,
REPLAN_SOONEST = 15.0  # or fewer in a short budget, but not fewer than these (see Replanner.due)
REPLAN_RATIO = 1.5  # the speed seen this many times above or below the planned: the plan is made again
REPLAN_SHARE = 0.05  # of the budget, at most, may be spent for a new plan to be made
REPLAN_TIMING = 0.01  # of the budget, at most, goes into timing the shapes again under the load a re-plan saw


class Sizing:
    """What --size needs to plan a run: the situation (the corpus, the limits and options given) and this
    device's speeds, timed within TIMING_SHARE of the budget at the threads charnn's policy may use and in
    the precision the run will use (with --precision auto on a device with a mixed precision, in both)."""

    def __init__(self, request: TrainRequest, vocab_size: int, split: tuple[int, int], world_size: int = 1,
                 threads: ThreadChoice | None = None, memory: str | os.PathLike | None = None):
        if request.size not in sizing.PRESETS and request.size != "auto":
            raise CharnnError(f"--size must be auto or one of {', '.join(sizing.PRESETS)}, not {request.size!r}")
        self.size, config = request.size, request.train
        budget = sizing.Budget(seconds=config.max_time, steps=config.max_steps, epochs=config.epochs)
        model = {k: v for k, v in request.model.given().items() if k in sizing.MODEL_OPTIONS}
        self.situation = sizing.Situation(train_chars=split[0], vocab_size=vocab_size, budget=budget, model=model,
                                          train=request.given_train(), val_chars=split[1], streams_multiple=world_size)
        device = resolve_device(config.device)
        self.requested = config.precision
        self.mixed = mixed_candidate(device) if config.precision == "auto" else None
        precisions = ["fp32", self.mixed] if self.mixed else [
            check_precision(config.precision, device) if config.precision != "auto" else "fp32"]
        allowance = TIMING_SHARE * (config.max_time or sizing.DEFAULT_BUDGET_RANGE[0]) / len(precisions)
        threads = threads or resolve_threads()
        remembered = SpeedMemory.in_cache(memory, device, threads.candidates if device.type == "cpu" else ())
        self.speeds_in = {p: MeasuredSpeeds(device, vocab_size, allowance, threads=threads, precision=p,
                                            memory=remembered) for p in precisions}
        self.precision = precisions[-1]

    @property
    def speeds(self) -> MeasuredSpeeds:
        """The speeds of the precision chosen (the last planned)."""
        return self.speeds_in[self.precision]

    def timed_now(self, allowance: float) -> MeasuredSpeeds:
        """The chosen precision's speeds, to be timed afresh within `allowance` seconds and without the
        memory: for a re-plan, whose point is the load the run saw."""
        s = self.speeds
        return MeasuredSpeeds(s.device, s.vocab_size, allowance, s.seconds_per_shape, s.threads, s.precision)

    def plan(self, estimate_time: bool = False) -> sizing.Plan:
        """The plan, in the precision the run will use. With --precision auto and a mixed precision on the
        device, the plan is made in it, and kept if a timing of the chosen model shows it MIN_GAIN times as
        fast as float32; else the plan is made again in float32."""
        if self.mixed is None:
            why = "asked for" if self.requested != "auto" else f"{self.speeds.device_type}: no native bf16 here"
            return self._plan_in(self.precision, estimate_time, why)
        plan = self._plan_in(self.mixed, estimate_time, "")
        low, fp32 = (self.speeds_in[p] for p in (self.mixed, "fp32"))
        for speeds in (low, fp32):
            speeds.check([plan.shape], force=True)
        gain = low.chars_per_sec(plan.shape) / fp32.chars_per_sec(plan.shape)
        for _ in range(CLOSE_CALLS):  # near the threshold a busy moment decides: time both again, keep the best
            if abs(math.log(gain / MIN_GAIN)) > math.log(1.1):
                break
            gain = low.retime(plan.shape) / fp32.retime(plan.shape)
        why = (f"{self.mixed} trains {plan.shape.num_layers}x{plan.shape.hidden_size} at {gain:.2f}x float32's "
               f"speed here ({MIN_GAIN:g}x needed)")
        if gain >= MIN_GAIN:
            return replace(plan, precision={"chosen": self.mixed, "why": why, "gain": round(gain, 3)})
        self.precision = "fp32"
        return self._plan_in("fp32", estimate_time, why, gain)

    def _plan_in(self, precision: str, estimate_time: bool, why: str, gain: float | None = None) -> sizing.Plan:
        """The plan at this precision's speeds: the device is timed only when the choice needs it (a time
        budget, the default budget, a GPU's streams) or with `estimate_time`; then the shapes the choice
        turns on are timed and the choice made again with their speeds."""
        self.precision = precision
        situation, speeds = self.situation, self.speeds
        plan = sizing.choose(situation, speeds, self.size)
        timed = plan.seconds is not None or estimate_time
        for _ in range(CHECKS):
            if not (timed and speeds.check(sizing.decisive_shapes(plan, situation))):
                break
            plan = sizing.choose(situation, speeds, self.size)
        if timed and plan.seconds is None:
            plan = replace(plan, seconds=sizing.expected_seconds(plan.shape, plan.steps, situation, speeds),
                           chars_per_sec=speeds.chars_per_sec(plan.shape))
        chosen = {"chosen": precision, "why": why, **({"gain": round(gain, 3)} if gain is not None else {})}
        return replace(plan, train={**plan.train, "precision": precision}, timings=speeds.record(), precision=chosen)


def choose_size(request: TrainRequest, vocab_size: int, split: tuple[int, int], world_size: int = 1,
                estimate_time: bool = False, threads: ThreadChoice | None = None,
                memory: str | os.PathLike | None = None) -> sizing.Plan:
    """The plan for `request`: its --size, the user's options and limits, the corpus's training and
    validation characters (`split`) and this device's speed (see `Sizing.plan`; `memory`: the cache
    directory of the speeds this machine has shown, charnn.plan.memory)."""
    return Sizing(request, vocab_size, split, world_size, threads, memory).plan(estimate_time)


@dataclass(frozen=True)
class Replan:
    """A run's new plan, and the configurations it makes."""

    plan: sizing.Plan
    model_config: ModelConfig
    config: TrainConfig


class Replanner:
    """A busy moment at the start can still mislead the timing, and a neighbour can come or go. After the
    first REPLAN_AFTER seconds of a run planned for a time (a --max-time, or the default budget), the
    training speed seen is compared with the planned (sooner in a short budget: `due`): more than
    REPLAN_RATIO apart while less than REPLAN_SHARE of the budget is spent, and the plan is made again
    for the rest of the budget at the speed seen. The shapes are timed again under that load first: it
    does not slow every shape alike (one thread, where the policy falls back to it, costs a small model
    less), so the new timings give the shapes' relative speeds, and the speed seen scales them.
    `build` turns a plan into the run's configurations."""

    def __init__(self, sized: Sizing, plan: sizing.Plan, build: Callable[[sizing.Plan], tuple[ModelConfig, TrainConfig]]):
        self.sized, self.plan, self.build = sized, plan, build

    def due(self, elapsed: float) -> bool:
        """Whether the speed seen is to be compared now: after REPLAN_AFTER seconds, or sooner in a budget
        whose REPLAN_SHARE ends sooner (half of that share, REPLAN_SOONEST at least): a ten-minute run
        beside a neighbour that stays would otherwise never be planned again."""
        budget = self.sized.situation.budget.seconds or self.plan.seconds
        soonest = REPLAN_AFTER if budget is None else max(REPLAN_SOONEST, REPLAN_SHARE * budget / 2)
        return elapsed >= min(REPLAN_AFTER, soonest)

    def decide(self, elapsed: float, seen: float) -> Replan | None:
        """The new plan, if the speed `seen` (training characters a second) calls for one at `elapsed`."""
        planned, budget = self.plan.chars_per_sec, self.sized.situation.budget.seconds or self.plan.seconds
        if planned is None or budget is None or elapsed > REPLAN_SHARE * budget:
            return None
        ratio = seen / planned
        if 1 / REPLAN_RATIO <= ratio <= REPLAN_RATIO:
            return None
        now = self.sized.timed_now(REPLAN_TIMING * budget)
        now.check([self.plan.shape], force=True)
        speeds = sizing.ScaledSpeeds(now, seen / now.chars_per_sec(self.plan.shape))
        situation, size = replace(self.sized.situation, spent=elapsed), self.sized.size
        plan = sizing.choose(situation, speeds, size)
        for _ in range(CHECKS):
            if not now.check(sizing.decisive_shapes(plan, situation)):
                break
            plan = sizing.choose(situation, speeds, size)
        why = {"elapsed": round(elapsed, 1), "seen_chars_per_sec": round(seen, 1), "planned_chars_per_sec":
               round(planned, 1), "ratio": round(ratio, 3), "first": self.plan.describe(),
               "first_timings": self.plan.timings}
        plan = replace(plan, train={**plan.train, "precision": self.sized.precision}, timings=now.record(),
                       precision=self.plan.precision, replanned=why)
        return Replan(plan, *self.build(plan))


def plan_training(request: TrainRequest, stdin: BinaryIO | None = None,
                  processes: int = 1) -> list[tuple[str, sizing.Plan]]:
    """`charnn train --dry-run`: the plan a new run would follow, after the checks that run would make
    (its options, paths and --nproc, the corpus, the memory), titled. For a small corpus started from
    nothing, the plan from the English base model too. The corpus is read (stdin into a temporary file
    that is removed), nothing is written (but the speeds timed, to the speed memory of an existing runs
    root) and nothing trained."""
    if request.resume is not None:
        raise CharnnError("--dry-run plans a new run; a resumed run keeps its own configuration")
    check_request(request, processes)
    init = open_init(request.init_from, request.out) if request.init_from is not None else None
    mode = init.weights.vocab.mode if init is not None and request.vocab_mode is None else request.vocab_mode
    with corpus_files(request.corpus, stdin=stdin) as corpus:
        vocab, count = Vocab.scan(corpus.chunks(), mode or Vocab.mode, corpus.describe_offset)
    plans = [("", _dry_plan(request, vocab, count, processes, init))]
    if init is None and suggests_base(vocab, count, request):
        base = open_init(SUGGESTED_BASE)
        plans.append((f"with --init-from {SUGGESTED_BASE}", _dry_plan(request, vocab, count, processes, base)))
    return plans


def _dry_plan(request: TrainRequest, vocab: Vocab, count: int, processes: int, init) -> sizing.Plan:
    if init is not None:
        request = fine_tuning_request(init, request)
        vocab = union_vocab(init.weights.vocab, vocab)
    n_train = int(round(count * (1.0 - request.train.val_frac)))  # as data.split_train_val cuts it
    root = runs_root()  # the speeds it times are remembered where runs are kept, if there is such a place
    plan = choose_size(request, vocab.size, (n_train, count - n_train), processes, estimate_time=True,
                       threads=resolve_threads(request.threads), memory=cache_dir(root) if root.is_dir() else None)
    batch, seq_len = plan.shape.batch_size, plan.shape.seq_len
    check_split_sizes(range(n_train), range(count - n_train), batch, seq_len)
    model = ModelConfig(vocab_size=vocab.size, **plan.model, **request.model.given()).validate()
    require_memory(training_bytes(model, batch // processes, seq_len), "building the model and training it",
                   str(resolve_device(request.train.device)), TRAIN_HINT)
    return plan
