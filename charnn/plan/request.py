"""What `charnn train` is asked, and everything about a new run that can be checked before PyTorch loads
and the corpus is read: the options, the corpus paths, --out and runs/latest. A mistake there is
answered at once (about 0.3 s), not after the second or two PyTorch takes to import."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..runs.claim import check_out
from ..config import DEFAULT_SIZE, ModelConfig, TrainConfig
from ..data.corpus import expand_sources
from ..errors import CharnnError
from ..runs.rundir import check_latest_pointer
from ..runtime.threads import resolve_threads


@dataclass(frozen=True)
class TrainRequest:
    """What `charnn train` was asked: the options the user gave (the configs own every default)."""

    corpus: tuple[str, ...] = ()  # files, directories or '-'
    model: dict = field(default_factory=dict)  # ModelConfig fields; `reset_on`: the delimiter as text
    train: dict = field(default_factory=dict)  # TrainConfig fields
    vocab_mode: str | None = None  # "byte" with --bytes; None: Vocab's default (characters), or the run's
    out: Path | None = None
    overwrite: bool = False
    resume: Path | None = None  # continue this run instead of starting one
    # --size: "auto" chooses the options not given (charnn.plan.sizing), a preset fixes them; None: no sizing,
    # the configs' defaults and their 10 epochs (the library's start_training)
    size: str | None = DEFAULT_SIZE
    threads: str | None = None  # --threads: a count or "auto"; None: CHARNN_THREADS, OMP_NUM_THREADS or auto
    init_from: str | None = None  # --init-from: a run, checkpoint, weights file or base model to start from


def check_request(request: TrainRequest, processes: int = 1) -> TrainConfig:
    """Everything about a new run that can be checked before reading its corpus: the options, the
    corpus paths, --out and runs/latest. `charnn train --nproc` checks once here before it starts its
    processes."""
    if not request.corpus:
        raise CharnnError("no corpus given", hint="pass text files, a directory or - for stdin; or --resume RUN_DIR")
    config = TrainConfig(**request.train).validate()
    resolve_threads(request.threads)
    sized_batch = request.size is not None and "batch_size" not in request.train  # sizing takes one that divides
    if config.batch_size % processes and not sized_batch:
        raise CharnnError(f"--batch-size {config.batch_size} does not divide among {processes} processes",
                          hint="use a multiple of the number of processes")
    ModelConfig(vocab_size=1, **{k: v for k, v in request.model.items() if k != "reset_on"}).validate()
    expand_sources(request.corpus)
    if request.out is not None:
        check_out(request.out, request.overwrite)
    check_latest_pointer()
    return config
