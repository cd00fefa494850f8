"""The `charnn` command line: thin commands over the library.

stdout carries only data (generated text, JSON); progress, tables, warnings and
errors go to stderr. A CharnnError becomes one line on stderr and exit code 1;
a bad option is exit code 2; Ctrl-C is 130 and SIGTERM 143.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import ModelConfig, TrainConfig, parse_duration, parse_save_every
from .corpus import read_corpus
from .data import split_train_val
from .device import describe_allocation, is_out_of_memory, resolve_device
from .distributed import ranks_from_environment
from .distributed import stop as stop_distributed
from .errors import CharnnError
from .evaluate import EvalResult, evaluate
from .history import (RunInfo, list_runs, loss_curves, plot_title, printable_chars, read_metrics, run_info,
                      run_metrics_dir, runs_dir)
from .inspect import find_neurons, parse_neuron, trace_text
from .plotting import parse_size, print_chart, save_png
from .progress import ConsoleTrainEvents
from .train import TrainEvents
from .render import html_page
from .runs import (load_tokens, looks_like_checkpoint, resolve_checkpoint, resume_training,
                   start_training)
from .sampling import SamplingConfig, TextGenerator, beam_search, default_prime, generate
from .show import heat_text, legend, neuron_table

try:  # typer >= 0.22 vendors click; older releases raise click's own exceptions
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as click_exceptions

EXIT_CODES_HELP = "Exit codes: 0 success, 1 error (one line on stderr), 2 bad usage, 130 interrupted (Ctrl-C), 143 terminated."

app = typer.Typer(
    name="charnn",
    help="Train character-level LSTM/GRU language models on any text, sample from them, evaluate them.\n\n"
         + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


class Cell(str, Enum):
    lstm = "lstm"
    gru = "gru"
    rnn = "rnn"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Schedule(str, Enum):
    cosine = "cosine"
    plateau = "plateau"
    constant = "constant"


def _default(cls, name: str) -> str:
    value = cls.__dataclass_fields__[name].default
    return f"\\[default: {value}]"


MODEL = "Model"
DATA = "Data"
OPTIM = "Optimisation"
STOP = "Stopping"
RUN = "Run and checkpoints"
PICTURES = "Pictures"


class _StopFlag:
    """SIGINT/SIGTERM ask training to stop after the current step and save; a second Ctrl-C aborts at once."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopFlag:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.signum = signum

    def __call__(self) -> str | None:
        return "interrupted" if self.signum is not None else None


@app.command(epilog=EXIT_CODES_HELP)
def train(
    corpus: Annotated[Optional[list[str]], typer.Argument(
        help="Text files, directories (their text files, recursively) or - for stdin.", show_default=False)] = None,
    # model
    cell: Annotated[Optional[Cell], typer.Option(help=f"Recurrent cell. {_default(ModelConfig, 'cell')}",
                                                 rich_help_panel=MODEL, show_default=False)] = None,
    layers: Annotated[Optional[int], typer.Option(help=f"Stacked recurrent layers. {_default(ModelConfig, 'num_layers')}",
                                                  rich_help_panel=MODEL, show_default=False)] = None,
    hidden_size: Annotated[Optional[int], typer.Option(
        help=f"Units per layer. {_default(ModelConfig, 'hidden_size')}", rich_help_panel=MODEL, show_default=False)] = None,
    embed_size: Annotated[Optional[int], typer.Option(
        help="Character embedding size. \\[default: the hidden size]", rich_help_panel=MODEL, show_default=False)] = None,
    dropout: Annotated[Optional[float], typer.Option(
        help=f"Dropout on the embedding, between layers and before the output. {_default(ModelConfig, 'dropout')}",
        rich_help_panel=MODEL, show_default=False)] = None,
    tie_weights: Annotated[Optional[bool], typer.Option(
        "--tie-weights/--no-tie-weights", help="Share the embedding and output matrices (sizes must match). \\[default: no]",
        rich_help_panel=MODEL, show_default=False)] = None,
    # data
    bytes_mode: Annotated[bool, typer.Option(
        "--bytes", help="Byte-level vocabulary of 256: accepts any file, including invalid UTF-8.",
        rich_help_panel=DATA)] = False,
    val_frac: Annotated[Optional[float], typer.Option(
        help=f"Fraction at the end of the text held out for validation. {_default(TrainConfig, 'val_frac')}",
        rich_help_panel=DATA, show_default=False)] = None,
    batch_size: Annotated[Optional[int], typer.Option(
        help=f"Contiguous streams trained side by side. {_default(TrainConfig, 'batch_size')}",
        rich_help_panel=DATA, show_default=False)] = None,
    seq_len: Annotated[Optional[int], typer.Option(
        help=f"Truncated-BPTT window; the hidden state carries across windows. {_default(TrainConfig, 'seq_len')}",
        rich_help_panel=DATA, show_default=False)] = None,
    reset_on: Annotated[Optional[str], typer.Option(
        help="Reset the hidden state at this delimiter, for a corpus of independent records (one poem, one "
             "joke each): the model reads its last character from a zero state, in training, evaluation and "
             "sampling (\\n, \\t and \\0 are understood, e.g. '\\n\\n').", rich_help_panel=DATA,
        show_default=False)] = None,
    carry_state: Annotated[Optional[bool], typer.Option(
        "--carry-state/--no-carry-state", help="Carry the hidden state from window to window (off: an ablation). "
        "\\[default: carry]", rich_help_panel=DATA, show_default=False)] = None,
    # optimisation
    lr: Annotated[Optional[float], typer.Option(
        help=f"Peak learning rate (AdamW). {_default(TrainConfig, 'lr')}", rich_help_panel=OPTIM, show_default=False)] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        help=f"AdamW weight decay on matrices. {_default(TrainConfig, 'weight_decay')}", rich_help_panel=OPTIM,
        show_default=False)] = None,
    grad_clip: Annotated[Optional[float], typer.Option(
        help=f"Clip the global gradient norm to this; 0 turns it off. {_default(TrainConfig, 'grad_clip')}",
        rich_help_panel=OPTIM, show_default=False)] = None,
    schedule: Annotated[Optional[Schedule], typer.Option(
        help="Learning-rate schedule after warm-up: cosine decay over the training budget, halving on a "
             f"validation plateau, or constant. {_default(TrainConfig, 'schedule')}", rich_help_panel=OPTIM,
        show_default=False)] = None,
    warmup_steps: Annotated[Optional[int], typer.Option(
        help=f"Linear warm-up steps. {_default(TrainConfig, 'warmup_steps')}", rich_help_panel=OPTIM,
        show_default=False)] = None,
    min_lr_ratio: Annotated[Optional[float], typer.Option(
        help=f"Cosine decays to lr x this. {_default(TrainConfig, 'min_lr_ratio')}", rich_help_panel=OPTIM,
        show_default=False)] = None,
    # stopping
    epochs: Annotated[Optional[float], typer.Option(
        help=f"Stop after this many passes over the training text. \\[default: {TrainConfig.DEFAULT_EPOCHS:g} when no "
             "other limit is given]", rich_help_panel=STOP, show_default=False)] = None,
    max_steps: Annotated[Optional[int], typer.Option(help="Stop after this many optimiser steps.",
                                                     rich_help_panel=STOP, show_default=False)] = None,
    max_time: Annotated[Optional[str], typer.Option(
        help="Stop after this much training time, e.g. 90s, 10m, 2h, 1h30m. The learning-rate schedule "
             "spans whichever limit comes first.", rich_help_panel=STOP, show_default=False)] = None,
    patience: Annotated[Optional[int], typer.Option(
        help="Stop early after N evaluations in a row without a new best validation loss.",
        rich_help_panel=STOP, show_default=False)] = None,
    # run and checkpoints
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="Run directory. \\[default: runs/CORPUS-NAME, numbered so no run is overwritten]",
        rich_help_panel=RUN, show_default=False)] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the run already in --out.", rich_help_panel=RUN)] = False,
    resume: Annotated[Optional[Path], typer.Option(
        help="Continue this run directory from its last.pt, towards the limits it was started with "
             "(a new --epochs/--max-steps/--max-time extends them).", rich_help_panel=RUN, show_default=False)] = None,
    eval_every: Annotated[Optional[int], typer.Option(
        help=f"Evaluate on the validation text every N steps (and at the end), saving checkpoints. "
             f"{_default(TrainConfig, 'eval_every')}", rich_help_panel=RUN, show_default=False)] = None,
    eval_chars: Annotated[Optional[int], typer.Option(
        help="Score at most this many validation characters per evaluation (its start), so a huge corpus "
             "evaluates in seconds; 0 scores all of it. \\[default: 1000000]", rich_help_panel=RUN,
        show_default=False)] = None,
    save_every: Annotated[Optional[str], typer.Option(
        help="Also save last.pt every N steps (a number) or every span of time (e.g. 10m); 0 saves only at "
             "evaluations and the end. \\[default: 10m]", rich_help_panel=RUN, show_default=False)] = None,
    keep: Annotated[Optional[int], typer.Option(
        help="Besides last.pt and best.pt, keep the N checkpoints saved before the last one, in "
             f"RUN_DIR/checkpoints/ (oldest removed first). {_default(TrainConfig, 'keep')}", rich_help_panel=RUN,
        show_default=False)] = None,
    log_every: Annotated[Optional[int], typer.Option(
        help=f"Log training loss and speed every N steps. {_default(TrainConfig, 'log_every')}", rich_help_panel=RUN,
        show_default=False)] = None,
    sample_every: Annotated[Optional[int], typer.Option(
        help=f"Print a {TrainConfig.sample_chars}-character sample to stderr every N steps, to watch the model "
             "learn (it does not change the training).", rich_help_panel=RUN, show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help=f"Random seed. {_default(TrainConfig, 'seed')}",
                                                rich_help_panel=RUN, show_default=False)] = None,
    device: Annotated[Optional[Device], typer.Option(
        help="Where to train; auto picks CUDA, then MPS, then the CPU. \\[default: auto]", rich_help_panel=RUN,
        show_default=False)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; errors only.",
                                        rich_help_panel=RUN)] = False,
    nproc: Annotated[Optional[int], typer.Option(
        help="Train data-parallel with N processes on this machine, as torchrun would start them (one per GPU, "
             "NCCL; on CPUs, gloo). The global --batch-size is split between them.", rich_help_panel=RUN,
        show_default=False)] = None,
    context: typer.Context = None,
) -> None:
    """Train a model on CORPUS, writing a run directory with checkpoints and metrics.

    Under torchrun (torchrun --nproc-per-node N -m charnn train ...) it trains with DistributedDataParallel.
    """
    ranks = ranks_from_environment()
    if nproc is not None:
        if nproc < 1:
            raise CharnnError(f"--nproc must be at least 1, not {nproc}")
        if nproc > 1 and not ranks.active:
            raise typer.Exit(_launch_processes(nproc, context.obj["argv"] if context and context.obj else sys.argv[1:]))
    console = _stderr()
    quiet = quiet or not ranks.is_main
    train_options = {
        "val_frac": val_frac, "batch_size": batch_size, "seq_len": seq_len, "carry_state": carry_state,
        "lr": lr, "weight_decay": weight_decay, "grad_clip": grad_clip,
        "schedule": schedule.value if schedule else None, "warmup_steps": warmup_steps,
        "min_lr_ratio": min_lr_ratio, "epochs": epochs, "max_steps": max_steps,
        "max_time": parse_duration(max_time) if max_time is not None else None,
        "eval_every": eval_every, "keep": keep, "log_every": log_every, "seed": seed,
        "patience": patience, "sample_every": sample_every,
        "device": device.value if device else None,
    }
    given = {k: v for k, v in train_options.items() if v is not None}
    if eval_chars is not None:
        given["eval_chars"] = eval_chars or None  # 0: the whole validation text
    if save_every is not None:  # "0" legitimately sets both to None
        given["save_every_steps"], given["save_every_seconds"] = parse_save_every(save_every)
    model_options = {
        "cell": cell.value if cell else None, "num_layers": layers, "hidden_size": hidden_size,
        "embed_size": embed_size, "dropout": dropout, "tie_weights": tie_weights,
        "reset_on": _unescape(reset_on) if reset_on is not None else None,
    }
    model_given = {k: v for k, v in model_options.items() if v is not None}
    events = ConsoleTrainEvents(console, quiet=quiet) if ranks.is_main else TrainEvents()
    with _StopFlag() as stop:
        try:
            trainer = _make_trainer(corpus, given, model_given, bytes_mode, out, overwrite, resume, events, stop,
                                    ranks)
            try:
                result = trainer.run()
            finally:
                trainer.release()
                if ranks.is_main:
                    events.close(trainer)
        except BaseException:
            stop_distributed()  # no waiting: the other ranks may be gone
            raise
        stop_distributed(wait=True)
    state = result.state
    if result.stop_reason == "interrupted":
        name = "SIGTERM" if stop.signum == signal.SIGTERM else "SIGINT"
        _say(console, f"stopped by {name} at step {state.step:,}; saved {result.run_dir / 'last.pt'}",
             quiet=not ranks.is_main)
        _say(console, f"resume with: charnn train --resume {result.run_dir}", quiet=not ranks.is_main)
        raise typer.Exit(143 if stop.signum == signal.SIGTERM else 130)
    best = state.best_val_loss
    reason = result.stop_reason.replace("_", "-")
    if result.stop_reason == "patience":
        reason = f"no new best validation loss in {trainer.config.patience} evaluations"
    _say(console, f"done ({reason}): {state.step:,} steps, best validation loss "
                  f"{best:.4f} nats/char ({best / math.log(2):.4f} bpc); model in {result.run_dir}", quiet=quiet)


def _launch_processes(nproc: int, argv: list[str]) -> int:
    """`charnn train --nproc N ...`: N copies of the command on this machine, set up as torchrun would set
    them up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), so signals and exit codes stay charnn's own."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    with socket.socket() as probe:  # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(nproc),
            "LOCAL_WORLD_SIZE": str(nproc)}
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    children = [subprocess.Popen([sys.executable, "-m", "charnn", *args],
                                 env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in range(nproc)]
    # Ctrl-C reaches every process of the terminal's group by itself; a SIGTERM sent here is passed on
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: [c.send_signal(signum) for c in children])
    try:
        return _wait_for_ranks(children)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_for_ranks(children: list[subprocess.Popen], grace: float = 30.0) -> int:
    """Rank 0's exit code; if a rank fails, the others (likely waiting for it) are stopped after `grace` s."""
    failed_at = None
    while True:
        try:
            codes = [child.poll() for child in children]
            if all(code is not None for code in codes):
                return codes[0] if codes[0] else next((code for code in codes if code), 0)
            if failed_at is None and any(code for code in codes if code is not None):
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() - failed_at > grace:
                for child in children:
                    if child.poll() is None:
                        child.kill()
            time.sleep(0.1)
        except KeyboardInterrupt:
            continue  # the ranks got the Ctrl-C too: wait for them to save and stop


def _make_trainer(corpus, given, model_given, bytes_mode, out, overwrite, resume, events, stop, ranks):
    if resume is not None:
        if out is not None and Path(out).resolve() != resume.resolve():
            raise CharnnError("--resume continues a run in place; --out cannot name another directory")
        overrides = dict(given, model=model_given)
        if bytes_mode:
            overrides["vocab_mode"] = "byte"
        return resume_training(resume, overrides, corpus_paths=corpus or None, events=events, should_stop=stop,
                               ranks=ranks)
    if not corpus:
        raise CharnnError("no corpus given", hint="pass text files, a directory or - for stdin; or --resume RUN_DIR")
    if "hidden_size" in model_given and "embed_size" not in model_given:
        model_given["embed_size"] = model_given["hidden_size"]
    config = TrainConfig(**given).validate()
    if config.device != "auto":
        resolve_device(config.device)  # fail before reading a large corpus
    return start_training(corpus, model_given, config, vocab_mode="byte" if bytes_mode else "char",
                          out=out, overwrite=overwrite, events=events, should_stop=stop, ranks=ranks)


def _say(console: Console, text: str, quiet: bool = False, style: str | None = None) -> None:
    if not quiet:
        console.print(text, markup=False, highlight=False, soft_wrap=True, style=style)


# --- sampling ----------------------------------------------------------------------------------


def _unescape(text: str) -> str:
    """'\\n', '\\t', '\\0' and '\\\\' in a separator typed on the command line."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "0": "\0", "r": "\r", "\\": "\\"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


class _PipeClosed(Exception):
    """The reader of stdout went away (`charnn sample | head`): stop quietly."""


class _Output:
    """Writes bytes to stdout, flushing often enough to stream but not on every character.

    It keeps its own buffer: with PYTHONUNBUFFERED set (common in containers) stdout's binary layer is
    unbuffered, and every generated character would otherwise cost a system call.
    """

    def __init__(self, stream=None, interval: float = 0.05):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.interval = interval
        self.pending = bytearray()
        self.last_flush = time.monotonic()
        self.closed = False

    def write(self, data: bytes, force_flush: bool = False) -> None:
        if self.closed:
            return
        self.pending += data
        now = time.monotonic()
        if force_flush or now - self.last_flush >= self.interval:
            try:
                self.stream.write(self.pending)
                self.stream.flush()
            except BrokenPipeError:
                self.closed = True
                raise _PipeClosed from None
            self.pending.clear()
            self.last_flush = now

    def flush(self) -> None:
        self.write(b"", force_flush=True)

    def close(self) -> None:
        """Flush what is left, unless the reader has gone."""
        try:
            self.flush()
        except _PipeClosed:
            _quiet_broken_pipe()
        self.closed = True


def _quiet_broken_pipe() -> None:
    """After the reader closed stdout, point it at /dev/null so the final flush at exit cannot fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _load(model: str | None, device_name: str):
    checkpoint = resolve_checkpoint(model)
    payload = load_checkpoint(checkpoint)
    net, vocab = model_from_checkpoint(payload, checkpoint)
    return checkpoint, net.to(resolve_device(device_name)), vocab, payload


SAMPLING = "Sampling"
PRIME = "Prime"
OUTPUT = "Output"


@app.command(epilog=EXIT_CODES_HELP)
def sample(
    model: Annotated[Optional[str], typer.Argument(
        help="Run directory (its best.pt) or checkpoint file. \\[default: the newest run]", show_default=False)] = None,
    length: Annotated[Optional[int], typer.Option(
        "--length", "-n", help="Characters to generate (bytes with a byte-level model): at most this many with "
        "--stop. \\[default: 1000; 300 per turn with --interactive]", show_default=False)] = None,
    temp: Annotated[Optional[float], typer.Option(
        "--temp", "-t", help="Temperature: below 1 is safer, above 1 wilder, 0 is greedy. \\[default: 1.0]",
        rich_help_panel=SAMPLING, show_default=False)] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Sample only from the k most likely characters.",
                                                 rich_help_panel=SAMPLING, show_default=False)] = None,
    top_p: Annotated[Optional[float], typer.Option(
        help="Sample only from the most likely characters whose probabilities add up to p (nucleus).",
        rich_help_panel=SAMPLING, show_default=False)] = None,
    min_p: Annotated[Optional[float], typer.Option(
        help="Sample only from characters at least p times as likely as the likeliest one.",
        rich_help_panel=SAMPLING, show_default=False)] = None,
    repetition_penalty: Annotated[float, typer.Option(
        help="Above 1, make characters seen in the last --repetition-window characters less likely "
             "(transformers' rule: positive logits divided by it, negative ones multiplied).",
        rich_help_panel=SAMPLING)] = 1.0,
    repetition_window: Annotated[int, typer.Option(
        help="How many recent characters --repetition-penalty looks back over; 0: all of them.",
        rich_help_panel=SAMPLING)] = 64,
    beam: Annotated[Optional[int], typer.Option(
        help="Beam search with N beams: the most likely continuation instead of a random one "
             "(deterministic; streams as the beams agree; --repetition-penalty applies).", rich_help_panel=SAMPLING, show_default=False)] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed: the same seed gives the same text. \\[default: random]",
                                                rich_help_panel=SAMPLING, show_default=False)] = None,
    prime: Annotated[Optional[str], typer.Option("--prime", "-p", help="Text to start from; it warms up the state.",
                                                 rich_help_panel=PRIME, show_default=False)] = None,
    prime_file: Annotated[Optional[str], typer.Option(help="Read the prime from a file (- for stdin).",
                                                      rich_help_panel=PRIME, show_default=False)] = None,
    drop_unknown: Annotated[bool, typer.Option(
        help="Leave out prime characters the model has never seen instead of failing.", rich_help_panel=PRIME)] = False,
    echo_prime: Annotated[bool, typer.Option("--echo-prime/--no-prime-echo",
                                             help="Print the prime before the continuation.", rich_help_panel=PRIME)] = True,
    stop: Annotated[Optional[str], typer.Option(
        help="End a sample where it produces this string, which is not printed (\\n, \\t and \\0 are understood; "
             "e.g. '\\n\\n' for a paragraph).", rich_help_panel=OUTPUT, show_default=False)] = None,
    num_samples: Annotated[int, typer.Option(help="Independent samples, generated together as one batch.",
                                             rich_help_panel=OUTPUT)] = 1,
    separator: Annotated[str, typer.Option(help="Printed between samples (\\n, \\t and \\0 are understood).",
                                           rich_help_panel=OUTPUT)] = "\\n\\n",
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Type a prime, watch the continuation; the state carries over between "
        "turns. An empty line continues; /reset forgets; /quit or Ctrl-D ends.", rich_help_panel=OUTPUT)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Nothing on stderr but errors.",
                                        rich_help_panel=OUTPUT)] = False,
    device: Annotated[Device, typer.Option(help="Where to sample.")] = Device.auto,
) -> None:
    """Generate text from a trained model and stream it to stdout."""
    if length is not None and length < 0:
        raise CharnnError(f"--length must be >= 0, not {length}")
    if num_samples < 1:
        raise CharnnError(f"--num-samples must be at least 1, not {num_samples}")
    if repetition_window < 0:
        raise CharnnError(f"--repetition-window must be >= 0 (0: all characters), not {repetition_window}")
    config = SamplingConfig(temperature=1.0 if temp is None else temp, top_k=top_k, top_p=top_p, min_p=min_p,
                            repetition_penalty=repetition_penalty, repetition_window=repetition_window or None)
    config.validate(vocab_size=1 << 30)
    if beam is not None:
        _check_beam_options(beam, temp, top_k, top_p, min_p, num_samples, interactive)
    if prime is not None and prime_file is not None:
        raise CharnnError("give --prime or --prime-file, not both")
    if interactive and prime_file == "-":
        raise CharnnError("--interactive reads its primes from stdin; --prime-file - cannot share it")
    stop_bytes = _unescape(stop).encode("utf-8", "surrogateescape") if stop else b""
    console = _stderr()
    prime_bytes = None
    if prime_file is not None:
        prime_bytes = _read_prime_file(prime_file)
    elif prime is not None:
        prime_bytes = prime.encode("utf-8", "surrogateescape")
    _, net, vocab, _ = _load(model, device.value)
    prime_ids = _encode_prime(vocab, prime_bytes, drop_unknown, console, quiet) if prime_bytes else None
    output = _Output()
    try:
        if interactive:
            _interactive(net, vocab, config, prime_ids, 300 if length is None else length, stop_bytes, drop_unknown,
                         seed, output, console, quiet)
            return
        length = 1000 if length is None else length
        shown_prime = vocab.decode_bytes(prime_ids) if prime_ids is not None and echo_prime else b""
        if prime_ids is None:
            prime_ids = default_prime(vocab, net.config.reset_ids)
        if beam is not None:
            steps = ([i] for i in beam_search(net, prime_ids, length, beam, repetition_penalty, config.repetition_window))
        else:
            steps = (ids.tolist() for ids in generate(net, prime_ids, length, config, num_samples=num_samples, seed=seed))
        samples = _SampleText(vocab, num_samples, stop_bytes, output)
        output.write(shown_prime)
        for ids in steps:
            if samples.add(ids):
                break
        samples.finish(_unescape(separator).encode("utf-8", "surrogateescape"), shown_prime)
        if length and sys.stdout.isatty():
            output.write(b"\n")
        output.flush()
    except _PipeClosed:
        _quiet_broken_pipe()
    finally:  # on Ctrl-C or SIGTERM too, what was generated reaches stdout
        output.close()


def _check_beam_options(beam, temp, top_k, top_p, min_p, num_samples, interactive) -> None:
    if beam < 1:
        raise CharnnError(f"--beam must be at least 1, not {beam}")
    given = [name for name, value in (("--temp", temp), ("--top-k", top_k), ("--top-p", top_p), ("--min-p", min_p))
             if value is not None]
    if given:
        raise CharnnError(f"--beam searches for the most likely text; {', '.join(given)} only apply to sampling")
    if num_samples != 1 or interactive:
        raise CharnnError("--beam gives one continuation: it does not combine with --num-samples or --interactive")


def _encode_prime(vocab, prime_bytes: bytes, drop_unknown: bool, console: Console, quiet: bool):
    prime_ids = vocab.encode(prime_bytes, unknown="drop" if drop_unknown else "error")
    if len(prime_ids) == 0:
        raise CharnnError("no prime characters are in the model's vocabulary")
    dropped = len(prime_bytes.decode("utf-8", "surrogateescape") if vocab.mode == "char" else prime_bytes) - len(prime_ids)
    if dropped:
        _say(console, f"charnn: left out {dropped:,} prime character{'s' * (dropped != 1)} the model does not know",
             quiet=quiet, style="yellow")
    return prime_ids


class _SampleText:
    """Generated ids -> bytes on stdout: sample 0 streams as it is made, the others are printed after it.

    With a stop string a sample ends where the string first appears (without printing it); sample 0
    holds back only its last len(stop) - 1 bytes, which might be the start of the string.
    """

    def __init__(self, vocab, num_samples: int, stop: bytes, output: _Output):
        self.vocab, self.stop, self.output = vocab, stop, output
        self.texts = [bytearray() for _ in range(num_samples)]  # sample 0: only what is not yet written
        self.done = [False] * num_samples

    def add(self, ids: list[int]) -> bool:
        """One character per sample; True once every sample has reached its stop string."""
        for index, token in enumerate(ids):
            if self.done[index]:
                continue
            text, piece = self.texts[index], self.vocab.token_bytes(token)
            text += piece
            if self.stop:
                found = text.find(self.stop, max(len(text) - len(piece) - len(self.stop) + 1, 0))
                if found >= 0:
                    del text[found:]
                    self.done[index] = True
        self._write_first()
        return all(self.done)

    def _write_first(self) -> None:
        text = self.texts[0]
        ready = len(text) if self.done[0] or not self.stop else len(text) - len(self.stop) + 1
        if ready > 0:
            self.output.write(bytes(text[:ready]))
            del text[:ready]

    def finish(self, separator: bytes, prime: bytes) -> None:
        self.done[0] = True
        self._write_first()
        for text in self.texts[1:]:
            self.output.write(separator + prime + bytes(text))


def _interactive(net, vocab, config, prime_ids, length, stop, drop_unknown, seed, output, console, quiet) -> None:
    """A prompt on stderr, continuations on stdout; the state carries over from turn to turn."""
    generator = TextGenerator(net, config, seed=seed)
    if prime_ids is not None:
        generator.feed(prime_ids)
    _say(console, "charnn interactive: type text and press Enter to continue it; an empty line continues "
                  "further; /reset forgets the context; /quit or Ctrl-D ends.", quiet=quiet, style="dim")
    while True:
        console.print("> ", end="", markup=False, highlight=False, style="bold")
        try:
            line = sys.stdin.readline()
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the session (in a continuation it cuts that short)
            console.print()
            _say(console, "charnn: interrupted")
            raise typer.Exit(130) from None
        if not line:  # Ctrl-D
            console.print()
            return
        line = line.rstrip("\n")
        if line.strip() in ("/quit", "/exit"):
            return
        if line.strip() == "/reset":
            generator.reset()
            _say(console, "(context forgotten)", quiet=quiet, style="dim")
            continue
        if line.strip() in ("/help", "/?"):
            _say(console, "type text to continue it; empty line: more; /reset; /quit", style="dim")
            continue
        try:
            if line:
                generator.feed(vocab.encode(_unescape(line).encode("utf-8", "surrogateescape"),
                                            unknown="drop" if drop_unknown else "error"))
            elif generator.logits is None:
                generator.feed(default_prime(vocab, generator.reset_ids))
        except CharnnError as err:
            _say(console, f"charnn: {err}", style="red")
            continue
        _continue(generator, vocab, length, stop, output, console)


def _continue(generator, vocab, length, stop, output, console) -> None:
    """One turn: stream a continuation; Ctrl-C cuts it short and returns to the prompt."""
    samples = _SampleText(vocab, 1, stop, output)
    try:
        for ids in generator.sample(length):
            if samples.add(ids.tolist()):
                break
        samples.finish(b"", b"")
    except KeyboardInterrupt:
        pass
    output.flush()
    console.print()


def _read_prime_file(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CharnnError(f"--prime-file {path}: no such file") from None
    except OSError as err:
        raise CharnnError(f"--prime-file {path}: cannot read ({err.strerror or err})") from None


# --- evaluation --------------------------------------------------------------------------------


@app.command("eval", epilog=EXIT_CODES_HELP)
def eval_command(
    paths: Annotated[Optional[list[str]], typer.Argument(
        help="[RUN_DIR_OR_CHECKPOINT] FILE...: text to score (- for stdin). With no file, the run's own "
             "validation text. With no model, the newest run.", show_default=False, metavar="[MODEL] [FILE]...")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")] = False,
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Run directory or checkpoint to evaluate.",
                                                 show_default=False)] = None,
    device: Annotated[Device, typer.Option(help="Where to evaluate.")] = Device.auto,
    show: Annotated[bool, typer.Option(
        "--show", help="Draw the text on stderr, each character coloured by how surprised the model was (bits).",
        rich_help_panel=PICTURES)] = False,
    show_chars: Annotated[int, typer.Option(
        help="Draw only the first N characters (the whole text is still scored); 0 draws all.",
        rich_help_panel=PICTURES)] = 2000,
    html_file: Annotated[Optional[str], typer.Option(
        "--html", metavar="FILE", help="Write the picture as a self-contained HTML page (- for stdout); hover a "
        "character for its bits and the model's guesses.", rich_help_panel=PICTURES, show_default=False)] = None,
    neuron: Annotated[Optional[str], typer.Option(
        metavar="LAYER:UNIT", help="Colour by this hidden unit's activation instead (blue -1, red +1); layers and "
        "units count from 0. Draws on stderr unless only --html is given.", rich_help_panel=PICTURES,
        show_default=False)] = None,
    find_units: Annotated[bool, typer.Option(
        "--find-neurons", help="Rank the units of every layer by how well they track features of the text "
        "(inside quotes, column, indentation, inside parentheses), on its first 200,000 characters.",
        rich_help_panel=PICTURES)] = False,
) -> None:
    """Score text with a model: characters, loss (nats/char), bits per character and perplexity.

    Characters the model has never seen are left out of the text (not fed, not scored) and counted.
    --show, --html and --neuron draw the text coloured by what the model made of it.
    """
    if show_chars < 0:
        raise CharnnError(f"--show-chars must be >= 0, not {show_chars}")
    if html_file == "-" and as_json:
        raise CharnnError("--html - and --json both want stdout", hint="write the page to a file")
    paths = list(paths or [])
    if model is None and paths and paths[0] != "-" and looks_like_checkpoint(Path(paths[0])):
        model = paths.pop(0)
    checkpoint, net, vocab, payload = _load(model, device.value)
    unit = parse_neuron(neuron, net.config) if neuron is not None else None
    unknown = 0
    if paths:
        corpus = read_corpus(paths)
        tokens, unknown = vocab.encode_bytes(corpus.data, describe_offset=corpus.describe_offset)
        sources = [s for s in corpus.sources]
        what = "files"
    else:
        run_dir = checkpoint.parent
        val_frac = payload.get("train_config", {}).get("val_frac")
        if not (run_dir / "tokens.npy").is_file() or not isinstance(val_frac, (int, float)):
            raise CharnnError(f"{checkpoint}: no text given and no run validation text beside the checkpoint",
                              hint="name a file to evaluate")
        _, tokens = split_train_val(load_tokens(run_dir), val_frac)
        sources = [f"{run_dir} (validation split)"]
        what = "validation"
    if len(tokens) < 2:
        raise CharnnError("nothing to score: the text has fewer than 2 characters the model knows")
    result: EvalResult = evaluate(net, tokens)
    report = {
        "loss": result.loss,
        "bpc": result.bpc,
        "perplexity": result.perplexity,
        "chars": result.chars,
        "unknown_chars": unknown,
        "unknown_policy": "skipped: left out of the text, neither fed to the model nor scored",
        "checkpoint": str(checkpoint),
        "sources": sources,
        "text": what,
    }
    console = _stderr()
    if show or html_file is not None or unit is not None:
        _draw_text(console, net, vocab, tokens, checkpoint, sources, show_chars, unit,
                   terminal=show or (unit is not None and html_file is None), html_file=html_file)
    if find_units:
        found = find_neurons(net, vocab, tokens)
        report["neurons"] = found.to_dict()
        console.print(neuron_table(found))
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        return
    table = Table(title=f"charnn eval: {checkpoint}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_row("characters scored", f"{result.chars:,}")
    table.add_row("loss (nats/char)", f"{result.loss:.4f}")
    table.add_row("bits per character", f"{result.bpc:.4f}")
    table.add_row("perplexity", f"{result.perplexity:.3f}")
    table.add_row("unknown characters", f"{unknown:,} (skipped: neither fed nor scored)")
    console.print(table)


def _draw_text(console: Console, net, vocab, tokens, checkpoint, sources, show_chars: int, unit, terminal: bool,
               html_file: str | None) -> None:
    """The first `show_chars` characters, coloured by surprisal or by one unit, on stderr and/or as HTML."""
    shown = tokens[:show_chars] if show_chars else tokens
    trace = trace_text(net, shown, neuron=unit)
    summary = [f"text: {', '.join(map(str, sources))}",
               f"characters 1-{len(shown):,} of {len(tokens):,} drawn (--show-chars); "
               f"{trace.mean_loss / math.log(2):.3f} bits per character on them"]
    if terminal:
        for line in summary:
            _say(console, line)
        console.print(legend(trace), soft_wrap=True)
        console.print(heat_text(trace, vocab), soft_wrap=True)
        console.print()
    if html_file is not None:
        page = html_page(trace, vocab, f"charnn eval: {checkpoint}", summary)
        if html_file == "-":
            sys.stdout.write(page)
            sys.stdout.flush()
            return
        try:
            Path(html_file).write_text(page, encoding="utf-8")
        except OSError as err:
            raise CharnnError(f"--html {html_file}: cannot write ({err.strerror or err})") from None
        _say(console, f"wrote {html_file}")


# --- benchmark ---------------------------------------------------------------------------------


@app.command(epilog=EXIT_CODES_HELP)
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="A reduced set in under two minutes: 2 training "
                                        "configs, 1 and 64 streams, a 100 MB corpus.")] = False,
    json_file: Annotated[Optional[str], typer.Option(
        "--json", help="Also write the figures as JSON to this file (- for stdout).", show_default=False)] = None,
    device: Annotated[Device, typer.Option(help="Where to measure.")] = Device.cpu,
    seconds: Annotated[Optional[float], typer.Option(
        help="Seconds per timed comparison. \\[default: 4 with --quick, else 12]", show_default=False)] = None,
    corpus_mb: Annotated[Optional[list[int]], typer.Option(
        "--corpus-mb", help="Synthetic corpus sizes for the encoding and memory rows (repeatable; 0 skips them). "
                            "\\[default: 100 and 1000; 100 with --quick]", show_default=False)] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        help="Where to write the synthetic corpora. \\[default: a temporary directory]", show_default=False)] = None,
) -> None:
    """Measure training and sampling speed against this machine's own ceilings and a plain PyTorch loop.

    A table goes to stderr; --json FILE writes the same figures as JSON.
    """
    from .bench import BenchOptions, run_benchmark  # noqa: PLC0415 (only this command needs it)

    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        raise CharnnError(f"--seconds must be positive, not {seconds}")
    if corpus_mb is not None and any(mb < 0 for mb in corpus_mb):
        raise CharnnError("--corpus-mb must be >= 0")
    device_name = str(resolve_device(device.value))
    console = _stderr()
    options = BenchOptions(quick=quick, device=device_name, seconds=seconds,
                           corpora_mb=None if corpus_mb is None else tuple(mb for mb in corpus_mb if mb > 0),
                           workdir=workdir)
    with console.status("benchmarking") as status:
        report = run_benchmark(options, log=lambda message: status.update(f"benchmarking: {message}"))
    for table in _bench_tables(report.to_dict()):
        console.print(table)
    if json_file is not None:
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        if json_file == "-":
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            Path(json_file).write_text(text, encoding="utf-8")


def _bench_tables(report: dict) -> list[Table]:
    m, c = report["machine"], report["ceilings"]
    ceilings = Table(title=f"charnn bench: {m['device']}, {m['threads']} threads, torch {m['torch']}",
                     title_justify="left")
    ceilings.add_column("ceiling")
    ceilings.add_column("measured", justify="right")
    ceilings.add_row("fp32 GEMM, torch (2048²)", f"{c['gemm_gflops_torch']:,.1f} GFLOP/s")
    if "gemm_gflops_numpy" in c:
        ceilings.add_row("fp32 GEMM, numpy's BLAS (2048²)", f"{c['gemm_gflops_numpy']:,.1f} GFLOP/s")
    ceilings.add_row("memory read bandwidth", f"{c['read_gb_per_sec']:,.1f} GB/s")
    if "cached_read_gb_per_sec" in c:
        ceilings.add_row("cache read rate (the size of the sampled model's weights)",
                         f"{c['cached_read_gb_per_sec']:,.1f} GB/s")
    tables = [ceilings]
    training = Table(title="training (chars/s; reference: pytorch/examples word_language_model loop)",
                     title_justify="left")
    for name in ("config", "charnn", "GFLOP/s", "of GEMM ceiling", "reference", "ratio"):
        training.add_column(name, justify="left" if name == "config" else "right")
    for r in report["training"]:
        training.add_row(r["config"], f"{r['chars_per_sec']:,.0f}", f"{r['gflops']:.1f}",
                         f"{r['ceiling_share']:.0%}", f"{r['reference_chars_per_sec']:,.0f}", f"{r['ratio']:.2f}x")
    tables.append(training)
    sampling = Table(title="sampling (chars/s; naive: nn.LSTM on one character, .item() every step)",
                     title_justify="left")
    for name in ("model", "streams", "charnn", "of ceiling", "naive", "ratio"):
        sampling.add_column(name, justify="left" if name == "model" else "right")
    for r in report["sampling"]:
        share = (f"{r['bandwidth_share']:.0%} of bandwidth" if "bandwidth_share" in r
                 else f"{r['ceiling_share']:.0%} of GEMM")
        if "cached_share" in r:
            share += f", {r['cached_share']:.0%} of cache"
        sampling.add_row(r["model"], str(r["streams"]), f"{r['chars_per_sec']:,.0f}", share,
                         f"{r['naive_chars_per_sec']:,.0f}", f"{r['ratio']:.1f}x")
    tables.append(sampling)
    if report["corpora"]:
        corpora = Table(title="big corpora (charnn train, 20 steps; the second run starts from the cache)",
                        title_justify="left")
        for name in ("corpus", "encode", "first run", "second run", "peak resident", "token file (mapped)"):
            corpora.add_column(name, justify="right")
        for r in report["corpora"]:
            corpora.add_row(f"{r['megabytes']:,} MB", f"{r['encode_mb_per_sec']:,.0f} MB/s",
                            f"{r['first_start_seconds']:.1f} s", f"{r['second_start_seconds']:.1f} s",
                            f"{r['peak_rss_mb']:,.0f} MB", f"{r['token_file_mb']:,.0f} MB")
        tables.append(corpora)
    return tables


# --- runs, info and plot ------------------------------------------------------------------------


def _print_json(data) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")  # ASCII: safe whatever the locale
    sys.stdout.flush()


def _or_dash(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


@app.command("runs", epilog=EXIT_CODES_HELP)
def runs_command(
    root: Annotated[Optional[Path], typer.Argument(
        help="Directory holding the runs. \\[default: $CHARNN_RUNS_DIR, else runs/]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list on stdout instead of a table.")] = False,
) -> None:
    """List the runs: corpus, model, parameters, steps, best validation bits/char, last update; newest first.

    The run marked * is the newest (runs/latest): what sample, eval, info and plot use by default.
    """
    if root is not None and not root.is_dir():
        raise CharnnError(f"{root}: no such directory")
    where = runs_dir(root)
    summaries = list_runs(where)
    if as_json:
        _print_json([s.to_dict() for s in summaries])
        return
    console = _stderr()
    if not summaries:
        _say(console, f"no runs under {where}/ (train one with `charnn train CORPUS`)")
        return
    table = Table(title=f"charnn runs: {where}/", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  padding=0)  # the box's blank divider is the gap between columns
    for name, justify in (("run", "left"), ("corpus", "left"), ("model", "left"), ("params", "right"),
                          ("steps", "right"), ("best bpc", "right"), ("updated", "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name not in ("run", "corpus"))
    now = datetime.now().astimezone()
    for s in summaries:
        name = Text("* " + s.name, style="bold") if s.latest else Text("  " + s.name)
        status = Text(s.status, style="green" if s.status == "finished" else "")
        if s.problems:
            status.append(" !", style="yellow")
        table.add_row(name, s.corpus or "-", s.size or "-", _short_count(s.parameters), f"{s.steps:,}",
                      _or_dash(s.best_val_bpc, ".3f"), _ago(s.updated, now), status)
    console.print(table)
    for s in summaries:
        if s.problems:
            _say(console, f"! {s.name}: {'; '.join(s.problems)}", style="yellow")
    if any(s.latest for s in summaries):
        _say(console, "* the newest run: what sample, eval, info and plot use by default")


def _short_count(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _ago(when: datetime | None, now: datetime) -> str:
    """'5m ago', '3h ago', '2d ago'; the date after a week."""
    if when is None:
        return "-"
    seconds = max((now - when).total_seconds(), 0)
    if seconds >= 7 * 86400:
        return when.strftime("%Y-%m-%d")
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return "just now"


@app.command("info", epilog=EXIT_CODES_HELP)
def info_command(
    model: Annotated[Optional[str], typer.Argument(
        help="Run directory or checkpoint file. \\[default: the newest run]", show_default=False)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of a table.")] = False,
) -> None:
    """Show a run or checkpoint in full: model, training, vocabulary, corpus, metrics so far, checkpoints."""
    info = run_info(model)
    if as_json:
        _print_json(info.to_dict())
        return
    _stderr().print(_info_table(info))


def _info_table(info: RunInfo) -> Table:
    table = Table(title=f"charnn info: {info.path}", show_header=False, title_justify="left", box=box.SIMPLE,
                  show_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")

    def section(name: str) -> None:
        if table.rows:
            table.add_section()
        table.add_row(Text(name, style="bold cyan"), "")

    def unbroken(text: str) -> Text:  # no spaces to break at, so folded at the edge
        return Text(text, overflow="fold")

    m, p = info.model, info.progress
    section("run" if info.kind == "run" else "checkpoint")
    table.add_row("path", str(info.path))
    if info.summary is not None:
        s = info.summary
        table.add_row("status", s.status + (" (the newest run)" if s.latest else ""))
        table.add_row("updated", s.updated.strftime("%Y-%m-%d %H:%M:%S %Z") if s.updated else "-")
        if s.problems:
            table.add_row("problems", Text("; ".join(s.problems), style="yellow"))
    section("model")
    table.add_row("architecture", f"{m.get('num_layers')}x{m.get('hidden_size')} {str(m.get('cell')).upper()}, "
                                  f"embedding {m.get('embed_size')}, dropout {m.get('dropout')}"
                                  f"{', tied weights' if m.get('tie_weights') else ''}")
    table.add_row("parameters", _or_dash(info.parameters, ","))
    if info.train:
        section("training")
        table.add_row("config", "  ".join(f"{k}={v}" for k, v in info.train.items()))
    section("vocabulary")
    chars = info.vocab_chars
    table.add_row("size", f"{_or_dash(info.vocab_size)} ({info.vocab.get('mode', '?')}-level)")
    table.add_row("characters", unbroken(printable_chars(chars, space="␣")) if chars is not None
                  else "every byte, 0x00-0xff")
    if chars is not None and " " in chars:
        table.add_row("", Text("(␣ is the space; \\n a newline)", style="dim"))
    if info.corpus:
        c = info.corpus
        section("corpus")
        table.add_row("sources", "\n".join(map(str, c.get("sources", []))) or "-")
        table.add_row("size", f"{_or_dash(c.get('bytes'), ',')} bytes, {_or_dash(c.get('tokens'), ',')} tokens "
                              f"({_or_dash(c.get('train_tokens'), ',')} training, "
                              f"{_or_dash(c.get('val_tokens'), ',')} validation)")
        table.add_row("fingerprint", unbroken(f"sha256:{c.get('fingerprint', '-')}"))
    section("metrics" if info.kind == "run" else "progress")
    table.add_row("steps", f"{p.steps:,}" + (f", {p.epochs:.2f} epochs" if p.epochs is not None else "")
                  + (f", {_duration(p.elapsed)} of training" if p.elapsed is not None else ""))
    if info.kind == "run":
        best_at = f" at step {p.best_step:,}" if p.best_step is not None else ""
        table.add_row("best validation", _loss_text(p.best_val_loss) + (best_at if p.best_val_loss is not None else ""))
        evaluations = f" ({p.evaluations} evaluation{'s' if p.evaluations != 1 else ''})" if p.evaluations else ""
        table.add_row("last validation", _loss_text(p.last_val_loss) + evaluations)
        table.add_row("last train loss", "-" if p.last_train_loss is None else f"{p.last_train_loss:.4f} nats/char")
        table.add_row("speed", "-" if p.chars_per_sec is None else f"{p.chars_per_sec:,.0f} chars/s (last log interval)")
    else:
        table.add_row("validation", _loss_text(p.last_val_loss) + " (at this step)")
        if p.best_val_loss is not None:
            table.add_row("best validation", _loss_text(p.best_val_loss) + " (of the run so far)")
    section("checkpoints")
    for c in info.checkpoints:
        what = (Text(f"unreadable: {c.error}", style="yellow") if c.error else
                f"step {_or_dash(c.step, ',')}, validation loss {_or_dash(c.val_loss, '.4f')}"
                f"{', resumable' if c.resumable else ''}")
        table.add_row(c.file, Text(f"{c.bytes / 1e6:,.1f} MB, ") + what)
    if not info.checkpoints:
        table.add_row("", "none yet")
    return table


def _loss_text(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f} nats/char = {loss / math.log(2):.4f} bits/char"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class XAxis(str, Enum):
    step = "step"
    time = "time"


@app.command("plot", epilog=EXIT_CODES_HELP)
def plot_command(
    run: Annotated[Optional[str], typer.Argument(
        help="Run directory (or a checkpoint in one). \\[default: the newest run]", show_default=False)] = None,
    x: Annotated[XAxis, typer.Option("--x", help="Against optimiser steps, or elapsed training time.")] = XAxis.step,
    png: Annotated[Optional[Path], typer.Option(
        help="Write the chart to this PNG file instead of drawing it in the terminal (needs matplotlib: "
             "pip install 'charnn[plot]').", show_default=False)] = None,
    png_size: Annotated[str, typer.Option(help="PNG size in pixels, WIDTHxHEIGHT.")] = "1200x700",
    width: Annotated[Optional[int], typer.Option(
        help="Terminal chart width in characters. \\[default: the terminal's, at most 160]", show_default=False)] = None,
    height: Annotated[Optional[int], typer.Option(
        help="Terminal chart height in lines. \\[default: fits the terminal, at most 24]", show_default=False)] = None,
) -> None:
    """Plot training and validation loss (nats/char, with bits/char) against steps or time.

    Drawn on stderr with braille characters, or written to a PNG with --png.
    """
    run_dir = run_metrics_dir(run)
    curves = loss_curves(read_metrics(run_dir / "metrics.jsonl"), x.value, title=plot_title(run_dir))
    # an explicit --width holds even where the console guesses 80 columns (a pipe, a file)
    console = _stderr() if width is None else Console(stderr=True, highlight=False, width=width)
    if png is not None:
        size = parse_size(png_size)
        save_png(curves, png, size)
        _say(console, f"wrote {png} ({size[0]}x{size[1]})")
        return
    print_chart(console, curves, width, height)


def _version_callback(value: bool) -> None:
    if value:
        print(f"charnn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train character-level LSTM/GRU language models on any text, sample from them, evaluate them."""


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every failure into one line on stderr and an exit code."""
    console = _stderr()
    try:
        argv = sys.argv[1:] if argv is None else list(argv)
        result = app(args=argv, prog_name="charnn", standalone_mode=False, obj={"argv": argv})
    except CharnnError as err:
        _say(console, f"charnn: error: {err}", style="red")
        return 1
    except click_exceptions.NoArgsIsHelpError:
        return 2  # the help has been shown
    except click_exceptions.UsageError as err:
        command = f"charnn {err.ctx.info_name} --help" if err.ctx and err.ctx.parent else "charnn --help"
        if err.ctx and err.ctx.command_path:
            command = f"{err.ctx.command_path} --help"
        _say(console, f"charnn: usage error: {err.format_message()} (see '{command}')", style="red")
        return 2
    except click_exceptions.ClickException as err:
        _say(console, f"charnn: error: {err.format_message()}", style="red")
        return err.exit_code
    except (typer.Abort, KeyboardInterrupt):
        _say(console, "charnn: interrupted")
        return 130
    except BrokenPipeError:
        _quiet_broken_pipe()
        return 0
    except Exception as err:  # a bug, not a user error: one line, and the traceback on request
        if is_out_of_memory(err) and not os.environ.get("CHARNN_DEBUG"):  # sampling or evaluating
            _say(console, f"charnn: error: out of memory ({describe_allocation(err)}) "
                          "(try --device cpu, or fewer --num-samples when sampling)", style="red")
            return 1
        if os.environ.get("CHARNN_DEBUG"):
            raise
        _say(console, f"charnn: internal error: {type(err).__name__}: {err} (set CHARNN_DEBUG=1 for the traceback)",
             style="red")
        return 1
    return result if isinstance(result, int) else 0
