"""Starting and resuming training: from a corpus (or a run directory) to a Trainer ready to `run()`.

`open_training` takes a `TrainRequest` (what `charnn train` was asked) and decides: a new run, or the
continuation of one. `start_training` and `resume_training` are the two cases, for library callers.
With several processes (torchrun), rank 0 reads the corpus and creates the run; the others then
join the run it made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Callable, Sequence

import numpy as np
import torch

from ..data.checked import read_model_config
from ..model.checkpoint import load_checkpoint
from ..config import ModelConfig, TrainConfig, flag
from ..data.corpus import corpus_files
from ..data.batches import TrainData, check_split_sizes, split_train_val
from ..runtime.device import resolve_device
from .distributed import SingleProcess
from ..errors import CharnnError
from .events import TrainEvents
from ..model.spec import training_bytes
from ..runtime.memory import TRAIN_HINT, require_memory
from ..runs.claim import claim_for_resume, claim_new_run
from ..plan.planning import Replanner, Sizing
from ..plan.pretrained import (SUGGESTED_BASE, InitFrom, added_chars, fine_tuning_request, open_init, remap_tokens,
                               starting_state, suggests_base, union_vocab)
from ..plan.request import TrainRequest, check_request
from ..runs.rundir import RunDir, remember_latest, runs_root
from ..runtime.threads import ThreadChoice, resolve_threads
from ..data.tokens import EncodedCorpus, cache_dir, encode_cached, place_tokens
from .trainer import Trainer, resolve_precision
from ..data.vocab import Vocab
from ..model.weights import arrays_from_state

# options that may change when resuming; every other one is fixed by the run
# what a resume may change: when it stops, how often it reports and saves, where it runs; not what its
# losses are measured on (--eval-chars, --val-frac: best.pt is the lowest of losses that must compare)
RESUMABLE_OPTIONS = ("epochs", "max_steps", "max_time", "eval_every", "save_every_steps",
                     "save_every_seconds", "keep", "log_every", "device", "patience", "sample_every", "sample_chars")


@dataclass(frozen=True)
class TrainHooks:
    """How training talks to its surroundings: progress events, a stop request, the process group."""

    events: TrainEvents | None = None
    should_stop: Callable[[], str | None] | None = None
    group: SingleProcess = field(default_factory=SingleProcess)
    threads: ThreadChoice | None = None  # None: charnn.runtime.threads' choice from the environment


def open_training(request: TrainRequest, hooks: TrainHooks | None = None, stdin: BinaryIO | None = None) -> Trainer:
    """The Trainer a request asks for: a new run on its corpus, or, with `resume`, the run continued."""
    hooks = hooks or TrainHooks()
    if hooks.threads is None:
        hooks = replace(hooks, threads=resolve_threads(request.threads))
    if request.resume is not None:
        if request.out is not None and Path(request.out).resolve() != Path(request.resume).resolve():
            raise CharnnError("--resume continues a run in place; --out cannot name another directory")
        overrides = dict(request.train, model=request.model)
        if request.vocab_mode is not None:
            overrides["vocab_mode"] = request.vocab_mode
        return resume_training(request.resume, overrides, corpus=request.corpus or None, stdin=stdin, hooks=hooks)
    config = check_request(request)
    if config.device != "auto":
        resolve_device(config.device)  # fail before reading a large corpus
    return _start(request, config, hooks, stdin)


def start_training(corpus_paths: Sequence[str], model_options: dict | None = None, config: TrainConfig | None = None,
                   *, vocab_mode: str | None = None, out: str | Path | None = None, overwrite: bool = False,
                   stdin: BinaryIO | None = None, hooks: TrainHooks | None = None) -> Trainer:
    """Read and encode the corpus, create the run directory, and return a Trainer ready to `run()`.

    `model_options` are ModelConfig fields (the vocabulary size comes from the corpus; `reset_on`
    may give the --reset-on delimiter as text); `out` names the run directory (default runs/NAME).
    """
    request = TrainRequest(corpus=tuple(corpus_paths), model=dict(model_options or {}), vocab_mode=vocab_mode,
                           out=Path(out) if out is not None else None, overwrite=overwrite, size=None)
    return _start(request, (config or TrainConfig()).validate(), hooks or TrainHooks(), stdin)


def _start(request: TrainRequest, config: TrainConfig, hooks: TrainHooks, stdin) -> Trainer:
    group = hooks.group
    if request.size is None or "batch_size" in request.train:  # else sizing takes a batch that divides
        group.check_batch(config.batch_size)  # every process refuses a batch that does not divide, before any work
    group.join(resolve_device(config.device))
    made: list[Trainer] = []

    def create() -> str:
        made.append(_new_run(request, config, hooks, stdin))
        return str(made[0].run_dir)

    run_path = group.on_main(create)  # rank 0 creates the run; every other process joins it
    return made[0] if made else _join_run(RunDir(run_path), hooks)


def _new_run(request: TrainRequest, config: TrainConfig, hooks: TrainHooks, stdin) -> Trainer:
    root = runs_root()
    init = open_init(request.init_from, request.out) if request.init_from is not None else None
    mode = init.weights.vocab.mode if init is not None and request.vocab_mode is None else request.vocab_mode
    with corpus_files(request.corpus, stdin=stdin, spool_dir=cache_dir(root)) as corpus:
        encoded = encode_cached(corpus, mode or Vocab.mode, root)
        name, sources = corpus.name, corpus.sources
    made = [encoded]
    try:
        if init is not None:
            encoded, request, config = _fine_tuning(init, encoded, request, config, cache_dir(root))
            made.append(encoded)
        return _create_run(encoded, name, sources, request, config, hooks, init)
    finally:
        for each in made:
            if each.temporary:  # stdin's encoding, or one for a base's vocabulary, not moved into a run
                each.path.unlink(missing_ok=True)


def _fine_tuning(init: InitFrom, encoded: EncodedCorpus, request: TrainRequest, config: TrainConfig,
                 directory: Path) -> tuple[EncodedCorpus, TrainRequest, TrainConfig]:
    """A run that starts from `init`: the corpus in the union of the two vocabularies, the base's shape as
    the model's options, and the fine-tuning learning rate and warm-up unless given."""
    request, _ = fine_tuning_request(init, request)
    vocab = union_vocab(init.weights.vocab, encoded.vocab)
    if vocab != encoded.vocab:
        path = directory / f".init-{os.getpid()}.npy.tmp"
        remap_tokens(encoded.tokens(), encoded.vocab, vocab, path)
        encoded = replace(encoded, path=path, vocab=vocab, cached=False)
    return encoded, request, replace(config, **request.train).validate()


def _create_run(encoded: EncodedCorpus, name: str, sources, request: TrainRequest, config: TrainConfig,
                hooks: TrainHooks, init: InitFrom | None = None) -> Trainer:
    """The Trainer first (building the model may fail), then the run directory and its files."""
    vocab, tokens = encoded.vocab, encoded.tokens()
    train_tokens, val_tokens = split_train_val(tokens, config.val_frac)
    plan = sized = None
    if request.size is not None:
        sized = Sizing(request, config, vocab.size, (len(train_tokens), len(val_tokens)), hooks.group.world_size,
                       hooks.threads)
        plan = sized.plan()
    asked = config
    model_config, config = _configs(plan, asked, vocab, request)
    precision = plan.precision if plan is not None else None
    if config.precision == "auto":  # no plan (the library's start_training): timed for this model
        chosen, why = resolve_precision(model_config, config, resolve_device(config.device))
        config, precision = replace(config, precision=chosen), {"chosen": chosen, "why": why}
    check_split_sizes(train_tokens, val_tokens, config.batch_size, config.seq_len)
    corpus_info = _corpus_info(encoded, sources, len(train_tokens), len(val_tokens))
    data = TrainData(vocab, train_tokens, val_tokens, corpus_info)
    share = config.batch_size // hooks.group.world_size
    require_memory(training_bytes(model_config, share, config.seq_len), "building the model and training it",
                   str(resolve_device(config.device)), TRAIN_HINT)  # before any directory is touched
    claim = claim_new_run(name, request.out, request.overwrite)
    run = claim.run
    try:
        trainer = Trainer(model_config, config, data, run.path, hooks.events, hooks.should_stop, hooks.group,
                          hooks.threads)
        trainer.writer.hold(claim)
        started = _start_from(trainer, init) if init is not None else None
        if plan is not None and plan.seconds is not None and hooks.group.world_size == 1:
            trainer.replanner = Replanner(sized, plan, lambda new: _configs(new, asked, vocab, request))
        if plan is not None and hooks.events is not None:
            hooks.events.on_plan(plan)  # once the model could be built: an error stays one line
        if init is None and hooks.events is not None and suggests_base(vocab, len(tokens)):
            hooks.events.on_note(f"a corpus this small would likely train better from charnn's English model: "
                                 f"--init-from {SUGGESTED_BASE} (--dry-run shows both plans)")
        place_tokens(encoded, run.tokens_path)
        run.write_config({"model": model_config.to_dict(), "train": config.to_dict(), "vocab": vocab.to_dict(),
                          "corpus": corpus_info, "parameters": trainer.parameters,
                          **({"precision": precision} if precision else {}),
                          **({"init_from": started} if started else {}),
                          **({"sizing": plan.to_dict()} if plan else {})})
        remember_latest(run.path)
    except BaseException:
        claim.abandon()  # nothing of the new run stays; a run it was to replace is back in place
        raise
    return trainer


def _corpus_info(encoded: EncodedCorpus, sources, train: int, val: int) -> dict:
    return {"sources": [os.path.abspath(s) if s != "-" else "-" for s in sources], "fingerprint": encoded.fingerprint,
            "bytes": encoded.bytes, "tokens": train + val, "train_tokens": train, "val_tokens": val}


def _start_from(trainer: Trainer, init: InitFrom) -> dict:
    """The trainer's model takes the weights of the model it starts from (new characters' rows as they
    were initialised); what config.json says of it."""
    fresh = arrays_from_state(trainer.model.state_dict())
    state = starting_state(init.weights, trainer.vocab, fresh)
    trainer.model.load_state_dict({name: torch.from_numpy(array) for name, array in state.items()})
    return init.record(added_chars(init.weights.vocab, trainer.vocab))


def _configs(plan, config: TrainConfig, vocab: Vocab, request: TrainRequest) -> tuple[ModelConfig, TrainConfig]:
    """The model's and the training's configurations: the options given, and a plan's choices for the rest."""
    if plan is not None:
        config = replace(config, **plan.train).validate()
    model_config = ModelConfig(vocab_size=vocab.size, **(plan.model if plan else {}),
                               **model_fields(vocab, request.model)).validate()
    return model_config, config


def _join_run(run: RunDir, hooks: TrainHooks) -> Trainer:
    """The Trainer of a run that rank 0 has just created, for another process."""
    saved = run.read_config()
    config = TrainConfig.from_dict(saved["train"])
    train_tokens, val_tokens = split_train_val(run.tokens(), config.val_frac)
    data = TrainData(Vocab.from_dict(saved["vocab"]), train_tokens, val_tokens, saved["corpus"])
    return Trainer(ModelConfig.from_dict(saved["model"]), config, data, run.path, hooks.events, hooks.should_stop,
                   hooks.group, hooks.threads)


def delimiter_ids(vocab: Vocab, delimiter: str) -> tuple[int, ...]:
    """--reset-on's string as token ids; every character must occur in the corpus."""
    if not delimiter:
        raise CharnnError("--reset-on needs a non-empty delimiter")
    try:
        return tuple(int(i) for i in vocab.encode(delimiter.encode("utf-8", "surrogateescape")))
    except CharnnError:
        raise CharnnError(f"--reset-on {delimiter!r}: the corpus does not contain all its characters") from None


def model_fields(vocab: Vocab, options: dict) -> dict:
    """Model options as ModelConfig fields: the --reset-on delimiter, given as text, becomes `reset_ids`."""
    fields = dict(options)
    reset_on = fields.pop("reset_on", None)
    if reset_on is not None:
        fields["reset_ids"] = delimiter_ids(vocab, reset_on)
    return fields


# --- resuming ---------------------------------------------------------------------------------


def resume_training(run_dir: str | Path, overrides: dict | None = None, *, corpus: Sequence[str] | None = None,
                    stdin: BinaryIO | None = None, hooks: TrainHooks | None = None) -> Trainer:
    """A Trainer that continues `run_dir` from its last.pt, exactly where it stopped.

    `overrides` may change only the stop conditions, cadence and device; any other option that
    differs from the run's is an error, as is a corpus other than the run's (`model`: model options,
    which must match the run's; `vocab_mode` likewise). The run is locked first: one writer at a time.
    """
    hooks = hooks or TrainHooks()
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise CharnnError(f"--resume {run.path}: no such run directory")
    claim = claim_for_resume(run) if hooks.group.is_main else None
    try:
        trainer = _resume(run, overrides or {}, corpus, stdin, hooks)
        trainer.writer.hold(claim)
        if claim is not None:
            run.remove_temporaries()
            run.record_train_config(trainer.config.to_dict())
            remember_latest(run.path)
    except BaseException as err:
        if claim is not None:
            claim.release()
        if isinstance(err, (LookupError, ValueError, RuntimeError, TypeError, AttributeError, ArithmeticError)):
            raise CharnnError(f"{run.last}: cannot resume from this checkpoint ({type(err).__name__}: {err})") from None
        raise
    return trainer


def _resume(run: RunDir, overrides: dict, corpus, stdin, hooks: TrainHooks) -> Trainer:
    if not run.last.is_file():
        raise CharnnError(f"--resume {run.path}: run has no last.pt to resume from")
    payload = load_checkpoint(run.last)
    if "train_state" not in payload or "train_config" not in payload:
        raise CharnnError(f"{run.last}: checkpoint holds no training state to resume from")
    try:
        model_config, vocab = read_model_config(payload["model_config"]), Vocab.from_dict(payload["vocab"])
    except CharnnError as err:
        raise CharnnError(f"{run.last}: its model is not one charnn builds ({err})") from None
    train_config = payload["train_config"]
    try:  # a run from before --precision trained in float32
        saved = TrainConfig.from_dict({"precision": "fp32", **train_config}).validate()
    except (CharnnError, TypeError) as err:
        raise CharnnError(f"{run.last}: its training configuration is not valid ({err})") from None
    config = _resumed_config(saved, model_config, vocab, overrides)
    corpus_info = payload.get("corpus", {})
    tokens = _checked_tokens(run, vocab, corpus_info, corpus, stdin)
    train_tokens, val_tokens = split_train_val(tokens, config.val_frac)
    data = TrainData(vocab, train_tokens, val_tokens, corpus_info)
    trainer = Trainer(model_config, config, data, run.path, hooks.events, hooks.should_stop, hooks.group,
                      hooks.threads)
    trainer.restore(payload)
    limit = overrides.get("max_steps")
    if limit is not None and trainer.state.step >= limit:
        raise CharnnError(f"--resume {run.path}: the run is at step {trainer.state.step:,}, already at --max-steps "
                          f"{limit:,}: nothing to train", hint="give a larger --max-steps to train further")
    return trainer


def _resumed_config(saved: TrainConfig, model_config: ModelConfig, vocab: Vocab, overrides: dict) -> TrainConfig:
    """The run's configuration with the overrides a resume allows; any other difference is an error."""
    overrides = dict(overrides)
    model, vocab_mode = overrides.pop("model", None) or {}, overrides.pop("vocab_mode", None)
    if overrides.get("precision") not in (None, "auto", saved.precision):
        raise CharnnError(f"--resume: the run trains in {saved.precision}; --precision {overrides['precision']} "
                          "would change what its remaining steps compute, and an exact resume with it",
                          hint="leave --precision out to keep the run's")
    overrides.pop("precision", None)
    for key, value in overrides.items():
        if key not in RESUMABLE_OPTIONS and value != getattr(saved, key):
            raise CharnnError(f"--resume: {flag(key)} {value} contradicts the run's {getattr(saved, key)}",
                              hint="leave it out to keep the run's setting, or start a new run")
    for key, value in model_fields(vocab, model).items():
        if value != getattr(model_config, key):
            raise CharnnError(f"--resume: {flag(key)} {value} contradicts the run's {getattr(model_config, key)}",
                              hint="the architecture is fixed when a run starts")
    if vocab_mode is not None and vocab_mode != vocab.mode:
        raise CharnnError(f"--resume: the run uses a {vocab.mode}-level vocabulary, not {vocab_mode}-level")
    return replace(saved, **{k: v for k, v in overrides.items() if k in RESUMABLE_OPTIONS}).validate()


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
