"""What a person sees while training: a live rich progress line on a terminal, plain log lines otherwise.

Everything goes to stderr; stdout stays free for data.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from .train import Trainer, TrainEvents

LN2 = math.log(2.0)


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_rate(chars_per_sec: float) -> str:
    return f"{chars_per_sec / 1000:.1f}k" if chars_per_sec >= 1000 else f"{chars_per_sec:.0f}"


def wants_live_output(console: Console) -> bool:
    """A live progress line only on a real terminal: not in a pipe or log file, not with TERM=dumb, and
    not with NO_COLOR set (https://no-color.org), whose users get plain log lines instead."""
    return console.is_terminal and not console.is_dumb_terminal and not os.environ.get("NO_COLOR")


class ConsoleTrainEvents(TrainEvents):
    """Progress on stderr: live on a terminal, one line per log/eval when piped or quiet."""

    def __init__(self, console: Console, live: bool | None = None, quiet: bool = False):
        self.console = console
        self.live = wants_live_output(console) if live is None else live
        self.quiet = quiet
        self.progress: Progress | None = None
        self.task = None
        self.train_loss: float | None = None
        self.val_text = "val -"
        self.rate = 0.0
        self._session_start = time.monotonic()

    # --- helpers --------------------------------------------------------------------------

    def _time_left(self, trainer: Trainer) -> float:
        fraction = trainer.budget_fraction()
        if fraction <= 0:
            return math.inf
        return trainer.state.elapsed * (1 - fraction) / fraction

    def _fields(self, trainer: Trainer) -> dict:
        loss = "-" if self.train_loss is None else f"{self.train_loss:.3f}"
        return {
            "status": f"step {trainer.state.step:,}  epoch {trainer.epoch_progress:.2f}  loss {loss}  "
                      f"{self.val_text}  {format_rate(self.rate)} chars/s  left {format_duration(self._time_left(trainer))}",
        }

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    # --- events ---------------------------------------------------------------------------

    def on_start(self, trainer: Trainer) -> None:
        m, c = trainer.model_config, trainer.config
        what = "resuming" if trainer.state.step else "training"
        self._print(
            f"{what} {m.num_layers}x{m.hidden_size} {m.cell.upper()} ({trainer.model.num_parameters():,} parameters, "
            f"vocabulary {m.vocab_size}) on {trainer.device.type}: {len(trainer.train_data):,} training and "
            f"{len(trainer.val_data):,} validation characters, batch {c.batch_size} x seq {c.seq_len}"
        )
        self._print(f"run directory: {trainer.run_dir}")
        if self.live and not self.quiet:
            self.progress = Progress(
                TextColumn("[bold]train[/]"), BarColumn(bar_width=24), TextColumn("{task.fields[status]}"),
                console=self.console, transient=False, refresh_per_second=4,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=1.0, completed=trainer.budget_fraction(),
                                               **self._fields(trainer))

    def on_step(self, trainer: Trainer) -> None:
        if self.progress is not None and trainer.state.step % 5 == 0:
            self.progress.update(self.task, completed=trainer.budget_fraction(), **self._fields(trainer))

    def on_log(self, trainer: Trainer, record: dict) -> None:
        self.train_loss = record["loss"]
        self.rate = record["chars_per_sec"]
        if self.progress is not None:
            self.progress.update(self.task, completed=trainer.budget_fraction(), **self._fields(trainer))
        else:
            self._print(
                f"step {record['step']:>7,}  epoch {record['epoch']:6.2f}  loss {record['loss']:.4f}  "
                f"lr {record['lr']:.2e}  {format_rate(record['chars_per_sec'])} chars/s  "
                f"elapsed {format_duration(record['elapsed'])}  left {format_duration(self._time_left(trainer))}"
            )

    def on_eval(self, trainer: Trainer, record: dict) -> None:
        self.val_text = f"val {record['val_loss']:.3f} ({record['val_bpc']:.3f} bpc)"
        line = (f"eval  step {record['step']:>7,}  val loss {record['val_loss']:.4f} nats/char  "
                f"{record['val_bpc']:.4f} bpc  best {record['best_val_loss']:.4f}  "
                f"({record['eval_seconds']:.1f}s)")
        if self.progress is not None:
            self.progress.update(self.task, **self._fields(trainer))
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self._print(line)

    def on_save(self, trainer: Trainer, path: Path, best: bool) -> None:
        pass

    def on_sample(self, trainer: Trainer, text: str) -> None:
        if self.quiet:
            return
        console = self.progress.console if self.progress is not None else self.console
        console.print(f"sample at step {trainer.state.step:,}:", style="bold", markup=False, highlight=False)
        console.print(text, style="dim", markup=False, highlight=False, soft_wrap=True)

    def on_warning(self, trainer: Trainer, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    def close(self, trainer: Trainer | None = None) -> None:
        if self.progress is not None:
            if trainer is not None:
                self.progress.update(self.task, completed=trainer.budget_fraction(), **self._fields(trainer))
            self.progress.stop()
            self.progress = None
