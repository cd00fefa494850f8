"""Starting and resuming training: from what `charnn train` was asked to a `Training`, a Trainer in its run.

`open_training` takes a `TrainRequest` and decides: a new run, or the continuation of one
(charnn.train.resume); `start_training` and `resume_training` are the two cases, for library callers.
Either way a `RunSession` (charnn.runs.session) claims the run directory and the Trainer is given its
writer; `Training.run()` trains, then the session keeps the run or gives the directory back. With several
processes (torchrun), rank 0 reads the corpus and creates the run; the others then join the run it made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Sequence

import torch

from ..config import ModelConfig, TrainConfig
from ..data.batches import TrainData, check_split_sizes, split_train_val
from ..data.corpus import corpus_files
from ..data.tokens import EncodedCorpus, cache_dir, encode_cached, place_tokens
from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.spec import training_bytes
from ..model.weights import arrays_from_state
from ..plan.planning import Replanner, Sizing
from ..plan.pretrained import (SUGGESTED_BASE, InitFrom, added_chars, fine_tuning_request, open_init, remap_tokens,
                               starting_state, suggests_base, union_vocab)
from ..plan.request import ModelOptions, TrainRequest, check_request
from ..runs.rundir import RunDir, runs_root
from ..runs.session import RunSession
from ..runtime.device import resolve_device
from ..runtime.memory import TRAIN_HINT, require_memory
from ..runtime.threads import resolve_threads
from .events import TrainResult
from .resume import resumed
from .trainer import ReplanCheck, Trainer, TrainHooks, resolve_precision


@dataclass
class Training:
    """A Trainer in its run. `run()` trains; then the run is kept if it has a model, and one that was to
    replace another (--overwrite) and never wrote a model puts the old run back (`discarded`); the lock is
    let go either way. `release()` also lets go of the process group's wrapper (after an interruption)."""

    trainer: Trainer
    session: RunSession

    def run(self) -> TrainResult:
        try:
            result = self.trainer.run()
        except BaseException:
            self.session.close()
            raise
        result.discarded = self.session.close()
        return result

    def release(self) -> None:
        self.session.release()
        self.trainer.release()


def open_training(request: TrainRequest, hooks: TrainHooks | None = None, stdin: BinaryIO | None = None) -> Training:
    """The Training a request asks for: a new run on its corpus, or, with `resume`, the run continued."""
    hooks = hooks or TrainHooks()
    if hooks.threads is None:
        hooks = replace(hooks, threads=resolve_threads(request.threads))
    if request.resume is not None:
        if request.out is not None and Path(request.out).resolve() != Path(request.resume).resolve():
            raise CharnnError("--resume continues a run in place; --out cannot name another directory")
        return Training(*resumed(request, hooks, stdin))
    config = check_request(request)
    if config.device != "auto":
        resolve_device(config.device)  # fail before reading a large corpus
    return _start(request, hooks, stdin)


def start_training(corpus_paths: Sequence[str], model_options: dict | None = None, config: TrainConfig | None = None,
                   *, vocab_mode: str | None = None, out: str | Path | None = None, overwrite: bool = False,
                   stdin: BinaryIO | None = None, hooks: TrainHooks | None = None) -> Training:
    """Read and encode the corpus, create the run directory, and return the Training ready to `run()`.

    `model_options` are ModelConfig fields (the vocabulary size comes from the corpus; `reset_on`
    may give the --reset-on delimiter as text); `out` names the run directory (default runs/NAME).
    """
    request = TrainRequest(corpus=tuple(corpus_paths), model=ModelOptions(**(model_options or {})),
                           train=(config or TrainConfig()).validate(), vocab_mode=vocab_mode,
                           out=Path(out) if out is not None else None, overwrite=overwrite, size=None)
    return _start(request, hooks or TrainHooks(), stdin)


def resume_training(run_dir: str | Path, overrides: dict | None = None, *, corpus: Sequence[str] | None = None,
                    stdin: BinaryIO | None = None, hooks: TrainHooks | None = None) -> Training:
    """The Training that continues `run_dir` from its last.pt, exactly where it stopped.

    `overrides` (TrainConfig fields) may change only the stop conditions, cadence and device; any other
    option that differs from the run's is an error, as is a corpus other than the run's (`model`: model
    options, which must match the run's; `vocab_mode` likewise). The run is locked first: one writer at a time.
    """
    overrides = dict(overrides or {})
    model, vocab_mode = overrides.pop("model", None) or {}, overrides.pop("vocab_mode", None)
    request = TrainRequest(corpus=tuple(corpus or ()), model=ModelOptions(**model), train=TrainConfig(**overrides),
                           given=frozenset(overrides), vocab_mode=vocab_mode, resume=Path(run_dir), size=None)
    return Training(*resumed(request, hooks or TrainHooks(), stdin))


def _start(request: TrainRequest, hooks: TrainHooks, stdin) -> Training:
    group = hooks.group
    if request.size is None or "batch_size" in request.given:  # else sizing takes a batch that divides
        group.check_batch(request.train.batch_size)  # every process refuses a batch that does not divide, first
    group.join(resolve_device(request.train.device))
    made: list[Training] = []

    def create() -> str:
        made.append(_new_run(request, hooks, stdin))
        return str(made[0].trainer.run_dir)

    run_path = group.on_main(create)  # rank 0 creates the run; every other process joins it
    return made[0] if made else _join_run(RunDir(run_path), hooks)


def _new_run(request: TrainRequest, hooks: TrainHooks, stdin) -> Training:
    root = runs_root()
    init = open_init(request.init_from, request.out) if request.init_from is not None else None
    mode = init.weights.vocab.mode if init is not None and request.vocab_mode is None else request.vocab_mode
    with corpus_files(request.corpus, stdin=stdin, spool_dir=cache_dir(root)) as corpus:
        encoded = encode_cached(corpus, mode or Vocab.mode, root)
        name, sources = corpus.name, corpus.sources
    made = [encoded]
    try:
        if init is not None:
            encoded, request = _fine_tuning(init, encoded, request, cache_dir(root))
            made.append(encoded)
        return _create_run(encoded, name, sources, request, hooks, init)
    finally:
        for each in made:
            if each.temporary:  # stdin's encoding, or one for a base's vocabulary, not moved into a run
                each.path.unlink(missing_ok=True)


def _fine_tuning(init: InitFrom, encoded: EncodedCorpus, request: TrainRequest,
                 directory: Path) -> tuple[EncodedCorpus, TrainRequest]:
    """A run that starts from `init`: the corpus in the union of the two vocabularies, the base's shape as
    the model's options, and the fine-tuning learning rate and warm-up unless given."""
    request = fine_tuning_request(init, request)
    vocab = union_vocab(init.weights.vocab, encoded.vocab)
    if vocab != encoded.vocab:
        path = directory / f".init-{os.getpid()}.npy.tmp"
        remap_tokens(encoded.tokens(), encoded.vocab, vocab, path)
        encoded = replace(encoded, path=path, vocab=vocab, cached=False)
    return encoded, request


def _create_run(encoded: EncodedCorpus, name: str, sources, request: TrainRequest, hooks: TrainHooks,
                init: InitFrom | None = None) -> Training:
    """The Trainer first (building the model may fail), then the run directory and its files."""
    vocab, tokens = encoded.vocab, encoded.tokens()
    train_tokens, val_tokens = split_train_val(tokens, request.train.val_frac)
    sized = None if request.size is None else Sizing(request, vocab.size, (len(train_tokens), len(val_tokens)),
                                                      hooks.group.world_size, hooks.threads, cache_dir(runs_root()))
    plan = None if sized is None else sized.plan()
    model_config, config = _configs(plan, request, vocab)
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
    session = RunSession.new(name, request.out, request.overwrite)
    try:
        trainer = Trainer(model_config, config, data, session.writer(config), hooks)
        started = _start_from(trainer, init) if init is not None else None
        if plan is not None and plan.seconds is not None and hooks.group.world_size == 1:
            trainer.replanning = ReplanCheck(Replanner(sized, plan, lambda new: _configs(new, request, vocab)))
        _announce(hooks, plan, init is None and suggests_base(vocab, len(tokens), request))
        place_tokens(encoded, session.run.tokens_path)
        session.run.write_config({"model": model_config.to_dict(), "train": config.to_dict(), "vocab": vocab.to_dict(),
                                  "corpus": corpus_info, "parameters": trainer.parameters,
                                  **({"precision": precision} if precision else {}),
                                  **({"init_from": started} if started else {}),
                                  **({"sizing": plan.to_dict()} if plan else {})})
        session.remember()
    except BaseException:
        session.abandon()  # nothing of the new run stays; a run it was to replace is back in place
        raise
    return Training(trainer, session)


def _announce(hooks: TrainHooks, plan, suggest_base: bool) -> None:
    """The plan, once the model could be built (an error stays one line), and the base model's suggestion."""
    if hooks.events is None:
        return
    if plan is not None:
        hooks.events.on_plan(plan)
    if suggest_base:
        hooks.events.on_note(f"a corpus this small would likely train better from charnn's English model: "
                             f"--init-from {SUGGESTED_BASE} (--dry-run shows both plans)")


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


def _configs(plan, request: TrainRequest, vocab: Vocab) -> tuple[ModelConfig, TrainConfig]:
    """The model's and the training's configurations: the options given, and a plan's choices for the rest."""
    config = request.train if plan is None else replace(request.train, **plan.train)
    return request.model.config(vocab, **(plan.model if plan else {})), config.validate()


def _join_run(run: RunDir, hooks: TrainHooks) -> Training:
    """The Training of a run that rank 0 has just created, for another process (which writes nothing)."""
    saved = run.read_config()
    config = TrainConfig.from_dict(saved["train"])
    train_tokens, val_tokens = split_train_val(run.tokens(), config.val_frac)
    data = TrainData(Vocab.from_dict(saved["vocab"]), train_tokens, val_tokens, saved["corpus"])
    session = RunSession.join(run)
    return Training(Trainer(ModelConfig.from_dict(saved["model"]), config, data, session.writer(config), hooks), session)
