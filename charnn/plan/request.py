"""What `charnn train` is asked, and everything about a new run that can be checked before PyTorch loads
and the corpus is read: the options, the corpus paths, --out and runs/latest. A mistake there is
answered at once (about 0.3 s), not after the second or two PyTorch takes to import."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import DEFAULT_SIZE, ModelConfig, TrainConfig
from ..data.corpus import expand_sources
from ..errors import CharnnError
from ..runs.claim import check_out
from ..runs.rundir import check_latest_pointer
from ..runtime.threads import resolve_threads

if TYPE_CHECKING:
    from ..data.vocab import Vocab


@dataclass(frozen=True)
class ModelOptions:
    """The model options a user gave; None: not given (ModelConfig's default, or --size's choice)."""

    cell: str | None = None
    num_layers: int | None = None
    hidden_size: int | None = None
    embed_size: int | None = None
    dropout: float | None = None
    tie_weights: bool | None = None
    reset_on: str | None = None  # --reset-on: the delimiter as text (its ids once the vocabulary is known)

    def given(self) -> dict:
        """The ModelConfig fields given (the delimiter aside: it is text until there is a vocabulary)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name != "reset_on" and getattr(self, f.name) is not None}

    def check(self) -> None:
        """The options as a model, before the corpus gives its vocabulary."""
        ModelConfig(vocab_size=1, **self.given()).validate()

    def fields(self, vocab: Vocab) -> dict:
        """The ModelConfig fields given, the delimiter as the vocabulary's ids."""
        reset_ids = {} if self.reset_on is None else {"reset_ids": delimiter_ids(vocab, self.reset_on)}
        return {**self.given(), **reset_ids}

    def config(self, vocab: Vocab, **chosen) -> ModelConfig:
        """The model: these options, the fields `chosen` for the rest (a plan's), the configs' defaults."""
        return ModelConfig(vocab_size=vocab.size, **{**chosen, **self.fields(vocab)}).validate()


@dataclass(frozen=True)
class TrainRequest:
    """What `charnn train` was asked: the options the user gave (the configs own every default)."""

    corpus: tuple[str, ...] = ()  # files, directories or '-'
    model: ModelOptions = field(default_factory=ModelOptions)
    train: TrainConfig = field(default_factory=TrainConfig)  # the options given, the configs' defaults for the rest
    given: frozenset[str] = frozenset()  # the TrainConfig fields the user gave: --size chooses among the others
    vocab_mode: str | None = None  # "byte" with --bytes; None: Vocab's default (characters), or the run's
    out: Path | None = None
    overwrite: bool = False
    resume: Path | None = None  # continue this run instead of starting one
    # --size: "auto" chooses the options not given (charnn.plan.sizing), a preset fixes them; None: no sizing,
    # the configs' defaults and their 10 epochs (the library's start_training)
    size: str | None = DEFAULT_SIZE
    threads: str | None = None  # --threads: a count or "auto"; None: CHARNN_THREADS, OMP_NUM_THREADS or auto
    init_from: str | None = None  # --init-from: a run, checkpoint, weights file or base model to start from

    def given_train(self) -> dict:
        """The TrainConfig values the user gave, by field."""
        return {name: getattr(self.train, name) for name in sorted(self.given)}

    def with_train(self, **values) -> TrainRequest:
        """This request with these TrainConfig values given as well."""
        return replace(self, train=replace(self.train, **values), given=self.given | set(values))


def delimiter_ids(vocab: Vocab, delimiter: str) -> tuple[int, ...]:
    """--reset-on's string as token ids; every character must occur in the corpus."""
    if not delimiter:
        raise CharnnError("--reset-on needs a non-empty delimiter")
    try:
        return tuple(int(i) for i in vocab.encode(delimiter.encode("utf-8", "surrogateescape")))
    except CharnnError:
        raise CharnnError(f"--reset-on {delimiter!r}: the corpus does not contain all its characters") from None


def check_request(request: TrainRequest, processes: int = 1) -> TrainConfig:
    """Everything about a new run that can be checked before reading its corpus: the options, the
    corpus paths, --out and runs/latest. `charnn train --nproc` checks once here before it starts its
    processes."""
    if not request.corpus:
        raise CharnnError("no corpus given", hint="pass text files, a directory or - for stdin; or --resume RUN_DIR")
    config = request.train.validate()
    resolve_threads(request.threads)
    sized_batch = request.size is not None and "batch_size" not in request.given  # sizing takes one that divides
    if config.batch_size % processes and not sized_batch:
        raise CharnnError(f"--batch-size {config.batch_size} does not divide among {processes} processes",
                          hint="use a multiple of the number of processes")
    request.model.check()
    expand_sources(request.corpus)
    if request.out is not None:
        check_out(request.out, request.overwrite)
    check_latest_pointer()
    return config
