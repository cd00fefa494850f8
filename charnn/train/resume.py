"""Resuming a run: its last.pt, its configuration with what a resume may change, its own encoded corpus.

A resumed run continues exactly where it stopped: the options that decide what its steps compute are the
run's (a request that contradicts one is refused), and only when it stops, how often it reports and saves,
and where it runs may change. The run is claimed by a `RunSession` first: one writer at a time.
"""

from __future__ import annotations

from dataclasses import replace
from typing import BinaryIO

import numpy as np

from ..config import ModelConfig, TrainConfig, flag
from ..data.batches import TrainData, split_train_val
from ..data.checked import read_model_config
from ..data.corpus import corpus_files
from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.checkpoint import load_checkpoint
from ..plan.request import TrainRequest
from ..runs.rundir import RunDir
from ..runs.session import RunSession
from .trainer import Trainer, TrainHooks

# what a resume may change: when it stops, how often it reports and saves, where it runs; not what its
# losses are measured on (--eval-chars, --val-frac: best.pt is the lowest of losses that must compare)
RESUMABLE_OPTIONS = ("epochs", "max_steps", "max_time", "eval_every", "save_every_steps",
                     "save_every_seconds", "keep", "log_every", "device", "patience", "sample_every", "sample_chars")


def resumed(request: TrainRequest, hooks: TrainHooks, stdin: BinaryIO | None = None) -> tuple[Trainer, RunSession]:
    """The Trainer that continues `request.resume` from its last.pt, and the session that holds the run
    (rank 0's claims it; every other process joins it)."""
    run = RunDir(request.resume)
    if not run.path.is_dir():
        raise CharnnError(f"--resume {run.path}: no such run directory")
    session = RunSession.resume(run) if hooks.group.is_main else RunSession.join(run)
    try:
        trainer = _trainer(run, session, request, hooks, stdin)
        if session.lock is not None:
            run.remove_temporaries()
            run.record_train_config(trainer.config.to_dict())
            session.remember()
    except BaseException as err:
        session.release()
        if isinstance(err, (LookupError, ValueError, RuntimeError, TypeError, AttributeError, ArithmeticError)):
            raise CharnnError(f"{run.last}: cannot resume from this checkpoint ({type(err).__name__}: {err})") from None
        raise
    return trainer, session


def _trainer(run: RunDir, session: RunSession, request: TrainRequest, hooks: TrainHooks, stdin) -> Trainer:
    if not run.last.is_file():
        raise CharnnError(f"--resume {run.path}: run has no last.pt to resume from")
    payload = load_checkpoint(run.last)
    if "train_state" not in payload or "train_config" not in payload:
        raise CharnnError(f"{run.last}: checkpoint holds no training state to resume from")
    try:
        model_config, vocab = read_model_config(payload["model_config"]), Vocab.from_dict(payload["vocab"])
    except CharnnError as err:
        raise CharnnError(f"{run.last}: its model is not one charnn builds ({err})") from None
    try:  # a run from before --precision trained in float32
        saved = TrainConfig.from_dict({"precision": "fp32", **payload["train_config"]}).validate()
    except (CharnnError, TypeError) as err:
        raise CharnnError(f"{run.last}: its training configuration is not valid ({err})") from None
    config = _resumed_config(saved, model_config, vocab, request)
    corpus_info = payload.get("corpus", {})
    tokens = _checked_tokens(run, vocab, corpus_info, request.corpus, stdin)
    train_tokens, val_tokens = split_train_val(tokens, config.val_frac)
    data = TrainData(vocab, train_tokens, val_tokens, corpus_info)
    trainer = Trainer(model_config, config, data, session.writer(config), hooks)
    trainer.restore(payload)
    limit = request.given_train().get("max_steps")
    if limit is not None and trainer.state.step >= limit:
        raise CharnnError(f"--resume {run.path}: the run is at step {trainer.state.step:,}, already at --max-steps "
                          f"{limit:,}: nothing to train", hint="give a larger --max-steps to train further")
    return trainer


def _resumed_config(saved: TrainConfig, model_config: ModelConfig, vocab: Vocab, request: TrainRequest) -> TrainConfig:
    """The run's configuration with the changes a resume allows; any other difference is an error."""
    changes = request.given_train()
    if changes.get("precision") not in (None, "auto", saved.precision):
        raise CharnnError(f"--resume: the run trains in {saved.precision}; --precision {changes['precision']} "
                          "would change what its remaining steps compute, and an exact resume with it",
                          hint="leave --precision out to keep the run's")
    changes.pop("precision", None)
    for key, value in changes.items():
        if key not in RESUMABLE_OPTIONS and value != getattr(saved, key):
            raise CharnnError(f"--resume: {flag(key)} {value} contradicts the run's {getattr(saved, key)}",
                              hint="leave it out to keep the run's setting, or start a new run")
    for key, value in request.model.fields(vocab).items():
        if value != getattr(model_config, key):
            raise CharnnError(f"--resume: {flag(key)} {value} contradicts the run's {getattr(model_config, key)}",
                              hint="the architecture is fixed when a run starts")
    if request.vocab_mode is not None and request.vocab_mode != vocab.mode:
        raise CharnnError(f"--resume: the run uses a {vocab.mode}-level vocabulary, not {request.vocab_mode}-level")
    return replace(saved, **{k: v for k, v in changes.items() if k in RESUMABLE_OPTIONS}).validate()


def _checked_tokens(run: RunDir, vocab: Vocab, corpus_info: dict, corpus, stdin) -> np.ndarray:
    """The run's encoded corpus, checked against its checkpoint (and against a corpus given again)."""
    tokens = run.tokens()
    if corpus:
        with corpus_files(corpus, stdin=stdin, spool_dir=run.path) as given:
            fingerprint = given.fingerprint()
        if fingerprint != corpus_info.get("fingerprint"):
            raise CharnnError(f"--resume {run.path}: the corpus given is not the one this run was trained on",
                              hint="leave the corpus out: the run keeps its own encoded copy")
    if len(tokens) != corpus_info.get("tokens", len(tokens)) or (len(tokens) and int(np.max(tokens)) >= vocab.size):
        raise CharnnError(f"{run.tokens_path}: does not match the run's vocabulary or corpus")
    return tokens
