"""`charnn train`: options into a TrainRequest, the library trains, the outcome in one line."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import DEFAULT_SIZE, ModelConfig, TrainConfig, parse_duration, parse_save_every
from ..errors import CharnnError
from ..plan.request import ModelOptions, TrainRequest, check_request
from ..runs.rundir import RunDir
from ..runtime.processes import Ranks, StopFlag, launch_processes, ranks_from_environment
from ..train.events import TrainEvents
from ..units import bits
from .app import (EXIT_CODES_HELP, Cell, Device, Precision, Schedule, Size, command, default, device_option, given,
                  say, stderr, threads_option, unescape)
from .progress import ConsoleTrainEvents, plan_lines


MODEL, DATA, OPTIM, STOP, RUN = "Model", "Data", "Optimisation", "Stopping", "Run and checkpoints"


def _model(text: str, name: str):
    return typer.Option(help=f"{text} {default(ModelConfig, name)}", rich_help_panel=MODEL, show_default=False)


def _sized(text: str, cls, name: str, panel: str = MODEL):
    """An option --size auto chooses when it is not given; its config default is --size small's value."""
    value = cls.__dataclass_fields__[name].default
    return typer.Option(help=f"{text} \\[default: chosen by --size auto; {value:g} with --size small]",
                        rich_help_panel=panel, show_default=False)


def _train(text: str, name: str | None = None, panel: str = OPTIM):
    suffix = f" {default(TrainConfig, name)}" if name else ""
    return typer.Option(help=text + suffix, rich_help_panel=panel, show_default=False)


@command(epilog=EXIT_CODES_HELP)
def train(
    corpus: Annotated[Optional[list[str]], typer.Argument(
        help="Text files, directories (their text files, recursively) or - for stdin.", show_default=False)] = None,
    size: Annotated[Optional[Size], typer.Option(
        help="auto: choose the options below that you do not give (layers, sizes, streams, window, dropout, "
        "lr) for the corpus, the budget and this device, and with no limit given a budget too; tiny, small "
        f"(the fixed 2x256 defaults), medium, large: fixed shapes. \\[default: {DEFAULT_SIZE}]",
        rich_help_panel=MODEL, show_default=False)] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (configuration, budget, expected characters and epochs) and exit "
        "without training or writing anything.", rich_help_panel=MODEL)] = False,
    init_from: Annotated[Optional[str], typer.Option(
        "--init-from", help="Start from this model's weights: a run directory, a checkpoint, a .safetensors file, or "
        "english (a small English model shipped with charnn). Its shape is kept (--size does not apply); characters "
        "it has never seen get fresh rows; a fine-tuning learning rate and warm-up apply unless given.",
        metavar="RUN_OR_WEIGHTS", rich_help_panel=MODEL, show_default=False)] = None,
    cell: Annotated[Optional[Cell], _model("Recurrent cell.", "cell")] = None,
    layers: Annotated[Optional[int], _sized("Stacked recurrent layers.", ModelConfig, "num_layers")] = None,
    hidden_size: Annotated[Optional[int], _sized("Units per layer.", ModelConfig, "hidden_size")] = None,
    embed_size: Annotated[Optional[int], typer.Option(
        help="Character embedding size. \\[default: the hidden size]", rich_help_panel=MODEL, show_default=False)] = None,
    dropout: Annotated[Optional[float], _sized("Dropout on the embedding, between layers and before the output.",
                                                ModelConfig, "dropout")] = None,
    tie_weights: Annotated[Optional[bool], typer.Option(
        "--tie-weights/--no-tie-weights", help="Share the embedding and output matrices (sizes must match). "
        "\\[default: no]", rich_help_panel=MODEL, show_default=False)] = None,
    bytes_mode: Annotated[bool, typer.Option(
        "--bytes", help="Byte-level vocabulary of 256: accepts any file, including invalid UTF-8.",
        rich_help_panel=DATA)] = False,
    val_frac: Annotated[Optional[float], _train("Fraction at the end of the text held out for validation.",
                                                "val_frac", DATA)] = None,
    batch_size: Annotated[Optional[int], _sized("Contiguous streams trained side by side.", TrainConfig,
                                                "batch_size", DATA)] = None,
    seq_len: Annotated[Optional[int], _sized("Truncated-BPTT window; the hidden state carries across windows.",
                                             TrainConfig, "seq_len", DATA)] = None,
    reset_on: Annotated[Optional[str], _train(
        "Reset the hidden state at this delimiter, for a corpus of independent records (one poem, one joke each): "
        "the model reads its last character from a zero state, in training, evaluation and sampling (\\n, \\t "
        "and \\0 are understood, e.g. '\\n\\n').", panel=DATA)] = None,
    carry_state: Annotated[Optional[bool], typer.Option(
        "--carry-state/--no-carry-state", help="Carry the hidden state from window to window (off: an ablation). "
        "\\[default: carry]", rich_help_panel=DATA, show_default=False)] = None,
    lr: Annotated[Optional[float], _sized("Peak learning rate (AdamW).", TrainConfig, "lr", OPTIM)] = None,
    weight_decay: Annotated[Optional[float], _train("AdamW weight decay on matrices.", "weight_decay")] = None,
    grad_clip: Annotated[Optional[float], _train("Clip the global gradient norm to this; 0 turns it off.",
                                                 "grad_clip")] = None,
    schedule: Annotated[Optional[Schedule], _train(
        "Learning-rate schedule after warm-up: cosine decay over the training budget, halving on a validation "
        "plateau, or constant.", "schedule")] = None,
    warmup_steps: Annotated[Optional[int], _train("Linear warm-up steps.", "warmup_steps")] = None,
    min_lr_ratio: Annotated[Optional[float], _train("Cosine decays to lr x this.", "min_lr_ratio")] = None,
    epochs: Annotated[Optional[float], _train(
        "Stop after this many passes over the training text. With no --epochs, --max-steps or --max-time, the run "
        "gets a default budget from the corpus and this device's speed (shown at the start) and stops early when "
        "the validation loss stops improving.", panel=STOP)] = None,
    max_steps: Annotated[Optional[int], _train("Stop after this many optimiser steps.", panel=STOP)] = None,
    max_time: Annotated[Optional[str], _train(
        "Stop after this much training time, e.g. 90s, 10m, 2h, 1h30m. The learning-rate schedule spans whichever "
        "limit comes first.", panel=STOP)] = None,
    patience: Annotated[Optional[int], _train(
        "Stop early after N evaluations in a row without a new best validation loss.", panel=STOP)] = None,
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Run directory. \\[default: runs/CORPUS-NAME, numbered so no run is overwritten]",
        rich_help_panel=RUN, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.",
                                            rich_help_panel=RUN)] = False,
    resume: Annotated[Optional[str], _train(
        "Continue this run directory from its last.pt, towards the limits it was started with (a new "
        "--epochs/--max-steps/--max-time extends them).", panel=RUN)] = None,
    eval_every: Annotated[Optional[int], _train(
        "Evaluate on the validation text every N steps (and at the end), saving checkpoints.", "eval_every",
        RUN)] = None,
    eval_chars: Annotated[Optional[int], _train(
        "Score at most this many validation characters per evaluation (pieces spread over it, the same each time), "
        "so a huge corpus evaluates in seconds; 0 scores all of it.", "eval_chars", RUN)] = None,
    save_every: Annotated[Optional[str], _train(
        "Also save last.pt every N steps (a number) or every span of time (e.g. 10m); 0 saves only at evaluations "
        f"and the end. \\[default: {TrainConfig.save_every_seconds / 60:g}m]", panel=RUN)] = None,
    keep: Annotated[Optional[int], _train(
        "Besides last.pt and best.pt, keep the N checkpoints saved before the last one, in RUN_DIR/checkpoints/ "
        "(oldest removed first).", "keep", RUN)] = None,
    log_every: Annotated[Optional[int], _train("Log training loss and speed every N steps.", "log_every", RUN)] = None,
    sample_every: Annotated[Optional[int], _train(
        f"Print a {TrainConfig.sample_chars}-character sample to stderr every N steps, to watch the model learn "
        "(it does not change the training).", panel=RUN)] = None,
    seed: Annotated[Optional[int], _train("Random seed.", "seed", RUN)] = None,
    device: Annotated[Optional[Device], device_option(RUN)] = None,
    precision: Annotated[Optional[Precision], _train(
        "Arithmetic of the forward pass: bf16 or fp16 (CUDA only, with a gradient scaler) as mixed precision, the "
        "weights, optimiser and checkpoints staying float32; auto takes bf16 where the device has it natively and "
        "it trains this model 1.15x as fast as fp32. A resumed run keeps its own.", "precision", RUN)] = None,
    threads: Annotated[Optional[str], threads_option(RUN)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; errors only.",
                                        rich_help_panel=RUN)] = False,
    nproc: Annotated[Optional[int], _train(
        "Train data-parallel with N processes on this machine, as torchrun would start them (one per GPU, NCCL; "
        "on CPUs, gloo). The global --batch-size is split between them.", panel=RUN)] = None,
    context: typer.Context = None,
) -> None:
    """Train a model on CORPUS, writing a run directory with checkpoints and metrics.

    Under torchrun (torchrun --nproc-per-node N -m charnn train ...) it trains with DistributedDataParallel.
    """
    ranks = ranks_from_environment()
    cores = os.cpu_count() or 1
    if nproc is not None and not 1 <= nproc <= cores:
        raise CharnnError(f"--nproc must be between 1 and {cores} (this machine's cores), not {nproc}")
    options = given(val_frac=val_frac, batch_size=batch_size, seq_len=seq_len, carry_state=carry_state, lr=lr,
                    weight_decay=weight_decay, grad_clip=grad_clip, schedule=schedule, warmup_steps=warmup_steps,
                    min_lr_ratio=min_lr_ratio, epochs=epochs, max_steps=max_steps, eval_every=eval_every, keep=keep,
                    log_every=log_every, seed=seed, patience=patience, sample_every=sample_every, device=device,
                    precision=precision)
    if max_time is not None:
        options["max_time"] = parse_duration(max_time)
    if eval_chars is not None:
        options["eval_chars"] = eval_chars or None  # 0: the whole validation text
    if save_every is not None:  # "0" legitimately sets both to None
        options["save_every_steps"], options["save_every_seconds"] = parse_save_every(save_every)
    model = ModelOptions(cell=cell.value if cell is not None else None, num_layers=layers, hidden_size=hidden_size,
                         embed_size=embed_size, dropout=dropout, tie_weights=tie_weights, reset_on=unescape(reset_on) if reset_on is not None else None)
    request = TrainRequest(corpus=tuple(_paths(corpus or [], "CORPUS")), model=model, train=TrainConfig(**options),
                           given=frozenset(options), vocab_mode="byte" if bytes_mode else None, out=_path(out, "--out"),
                           overwrite=overwrite, resume=_path(resume, "--resume"),
                           **given(size=size, threads=threads, init_from=init_from))
    if init_from is not None and size is not None:
        raise CharnnError("--init-from keeps the shape of the model it starts from: --size does not apply",
                          hint="leave --size out")
    if init_from == "":
        raise typer.BadParameter("an empty path; name a run, a file or a base model", param_hint="--init-from")
    if init_from is not None and resume is not None:
        raise CharnnError("--resume continues a run from its own last.pt: --init-from does not apply")
    if resume is not None and size is not None:
        raise CharnnError("--resume: --size chooses a new run's shape and schedule; a resumed run keeps its own",
                          hint="leave --size out")
    if dry_run:
        from ..plan.planning import plan_training  # noqa: PLC0415

        for title, plan in plan_training(request, processes=nproc or 1):
            for line in ([title + ":"] if title else []) + plan_lines(plan):
                say(stderr(), line if not title else "  " + line)
        return
    if nproc is not None and nproc > 1 and not ranks.active:
        if request.resume is None:  # a resumed run was checked when it started; its ranks load it
            check_request(request, processes=nproc)  # once, here, rather than in every process
        raise typer.Exit(launch_processes(nproc, context.obj["argv"] if context and context.obj else sys.argv[1:]))
    if request.resume is None:
        check_request(request)  # a mistake is answered before PyTorch loads (training checks again)
    _run(request, ranks, quiet)


def _paths(paths: list[str], name: str) -> list[str]:
    """An empty path (an unset "$CORPUS") is a mistake, not the current directory."""
    if any(path == "" for path in paths):
        raise typer.BadParameter("an empty path; name a file, a directory or - for stdin", param_hint=name)
    return paths


def _path(text: str | None, name: str) -> Path | None:
    if text == "":
        raise typer.BadParameter("an empty path; name a directory", param_hint=name)
    return None if text is None else Path(text)


def _discarded(console, result, stop: StopFlag, silent: bool) -> None:
    """--overwrite, and the new run stopped before it had a model: the old run is back in its place."""
    if result.stop_reason != "interrupted":
        raise CharnnError(f"the new run ended without a model (no evaluation improved on the start); "
                          f"{result.run_dir} holds the run it held before")
    say(console, f"stopped by {stop.name} at step {result.state.step:,}, before the new run's first evaluation: "
                 f"{result.run_dir} holds the run it held before", quiet=silent)
    raise typer.Exit(stop.exit_code)


def _run(request: TrainRequest, ranks: Ranks, quiet: bool) -> None:
    """Train as the request says, with progress on stderr; Ctrl-C and SIGTERM stop after a step and save."""
    from ..train.distributed import leave_process_group, process_group  # noqa: PLC0415 (PyTorch: not for mistakes)
    from ..train.start import open_training  # noqa: PLC0415
    from ..train.trainer import TrainHooks  # noqa: PLC0415

    group = process_group(ranks)
    console = stderr()
    quiet, silent = quiet or not group.is_main, not group.is_main
    events = ConsoleTrainEvents(console, quiet=quiet) if group.is_main else TrainEvents()
    stop = StopFlag()  # until training starts, a signal ends the command at once (reading a pipe, say)
    try:
        training = open_training(request, TrainHooks(events, stop, group))
        try:
            with stop:
                result = training.run()
        finally:
            training.release()
            if group.is_main:
                events.close(training.trainer.snapshot())
    except BaseException:
        leave_process_group()  # no waiting: the other ranks may be gone
        raise
    leave_process_group(wait=True)
    state = result.state
    if result.discarded:
        _discarded(console, result, stop, silent)
    if result.stop_reason == "interrupted":
        say(console, f"stopped by {stop.name} at step {state.step:,}; saved {RunDir(result.run_dir).last}", quiet=silent)
        say(console, f"resume with: charnn train --resume {result.run_dir}", quiet=silent)
        raise typer.Exit(stop.exit_code)
    reason = result.stop_reason.replace("_", "-")
    if result.stop_reason == "patience":
        reason = f"no new best validation loss in {training.trainer.config.patience} evaluations"
    best = state.best_val_loss
    say(console, f"done ({reason}): {state.step:,} steps, best validation loss {best:.4f} nats/char "
                 f"({bits(best):.4f} bpc); model in {result.run_dir}", quiet=quiet)
