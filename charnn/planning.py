"""A run's plan before it starts: what `--size` chooses on this device, and `--dry-run`'s plan, which
reads the corpus but writes nothing and trains nothing.

charnn.sizing holds the rule; this module gathers what the rule needs (the corpus's size, the limits
and options the user gave, the device's speed, timed here within TIMING_SHARE of the budget).
"""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

from . import sizing
from .config import ModelConfig, TrainConfig
from .corpus import corpus_files
from .data import check_split_sizes
from .device import resolve_device
from .errors import CharnnError
from .memory import TRAIN_HINT, require_memory, training_bytes
from .request import check_request
from .speed import MeasuredSpeeds
from .vocab import Vocab

TIMING_SHARE = 0.02  # of the budget, at most, goes into timing shapes before choosing


def choose_size(request, config: TrainConfig, vocab_size: int, split: tuple[int, int], world_size: int = 1,
                estimate_time: bool = False) -> sizing.Plan:
    """The plan for `request` (a runs.TrainRequest): its --size, the user's options and limits, the corpus's
    training and validation characters (`split`) and this device's speed. The device is timed only when
    the choice needs it (a time budget, the default budget, a GPU's streams) or with `estimate_time`."""
    if request.size not in sizing.PRESETS and request.size != "auto":
        raise CharnnError(f"--size must be auto or one of {', '.join(sizing.PRESETS)}, not {request.size!r}")
    budget = sizing.Budget(seconds=config.max_time, steps=config.max_steps, epochs=config.epochs)
    model = {k: v for k, v in request.model.items() if k in sizing.MODEL_OPTIONS}
    situation = sizing.Situation(train_chars=split[0], vocab_size=vocab_size, budget=budget, model=model,
                                 train=dict(request.train), val_chars=split[1], streams_multiple=world_size)
    allowance = TIMING_SHARE * (config.max_time or sizing.DEFAULT_BUDGET_RANGE[0])
    speeds = MeasuredSpeeds(resolve_device(config.device), vocab_size, allowance)
    plan = sizing.choose(situation, speeds, request.size)
    if estimate_time and plan.seconds is None:
        plan = replace(plan, seconds=sizing.expected_seconds(plan.shape, plan.steps, situation, speeds))
    return plan


def plan_training(request, stdin: BinaryIO | None = None, processes: int = 1) -> sizing.Plan:
    """`charnn train --dry-run`: the plan a new run would follow, after the checks that run would make
    (its options, paths and --nproc, the corpus, the memory). The corpus is read (stdin into a
    temporary file that is removed), nothing is written and nothing trained."""
    if request.resume is not None:
        raise CharnnError("--dry-run plans a new run; a resumed run keeps its own configuration")
    config = check_request(request, processes)
    with corpus_files(request.corpus, stdin=stdin) as corpus:
        vocab, count = Vocab.scan(corpus.chunks(), request.vocab_mode or Vocab.mode, corpus.describe_offset)
    n_train = int(round(count * (1.0 - config.val_frac)))  # as data.split_train_val cuts it
    plan = choose_size(request, config, vocab.size, (n_train, count - n_train), processes, estimate_time=True)
    batch, seq_len = plan.shape.batch_size, plan.shape.seq_len
    check_split_sizes(range(n_train), range(count - n_train), batch, seq_len)
    shape = {name: value for name, value in request.model.items() if name != "reset_on"}  # no size of its own
    model = ModelConfig(vocab_size=vocab.size, **plan.model, **shape).validate()
    require_memory(training_bytes(model, batch // processes, seq_len), "building the model and training it",
                   str(resolve_device(config.device)), TRAIN_HINT)
    return plan
