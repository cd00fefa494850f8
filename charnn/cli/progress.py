"""What a person sees while training: a live rich progress line on a terminal, plain log lines otherwise.

Everything goes to stderr; stdout stays free for data.
"""

from __future__ import annotations

import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn

from ..config import flag
from ..train.events import TrainEvents, TrainSnapshot
from ..units import format_duration
from .app import shown


def format_rate(chars_per_sec: float) -> str:
    return f"{chars_per_sec / 1000:.1f}k" if chars_per_sec >= 1000 else f"{chars_per_sec:.0f}"


def _threads(n: int) -> str:
    return f"{n} thread{'s' * (n != 1)}"


def _on_threads(threads: int | None) -> str:
    return "" if threads is None else f" on {_threads(threads)}"


def plan_lines(plan) -> list[str]:
    """What --size chose (a charnn.plan.sizing.Plan), why, the budget, and the options that reproduce it."""
    chosen = " ".join(f"{flag(k)} {v:g}" if isinstance(v, float) else f"{flag(k)} {v}"
                      for k, v in {**plan.model, **plan.train}.items())
    when = f" (~{format_duration(plan.seconds)} on this device)" if plan.seconds is not None else ""
    lines = [f"size {plan.size}: {plan.describe()}", f"  why: {plan.reason}",
             f"  budget: {plan.steps:,} step{'s' * (plan.steps != 1)}, {plan.chars:,} characters, {plan.epochs:.1f} epochs{when}"]
    return lines + ([f"  chosen: {chosen}"] if chosen else [])


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

    # --- helpers --------------------------------------------------------------------------

    def _fields(self, snapshot: TrainSnapshot) -> dict:
        loss = "-" if self.train_loss is None else f"{self.train_loss:.3f}"
        return {
            "status": f"step {snapshot.step:,}  epoch {snapshot.epoch:.2f}  loss {loss}  {self.val_text}  "
                      f"{format_rate(self.rate)} chars/s{_on_threads(snapshot.threads)}  "
                      f"left {format_duration(snapshot.time_left)}",
        }

    def _print(self, text: str) -> None:
        if not self.quiet:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    # --- events ---------------------------------------------------------------------------

    def on_start(self, snapshot: TrainSnapshot) -> None:
        m, c = snapshot.model, snapshot.config
        what = "resuming" if snapshot.step else "training"
        self._print(
            f"{what} {m.num_layers}x{m.hidden_size} {m.cell.upper()} ({snapshot.parameters:,} parameters, "
            f"vocabulary {m.vocab_size}) on {snapshot.device} in {c.precision}: {snapshot.train_chars:,} training and "
            f"{snapshot.val_chars:,} validation characters, batch {c.batch_size} x seq {c.seq_len}"
        )
        self._print(f"run directory: {snapshot.run_dir}")
        if self.live and not self.quiet:
            self.progress = Progress(
                TextColumn("[bold]train[/]"), BarColumn(bar_width=24), TextColumn("{task.fields[status]}"),
                console=self.console, transient=False, refresh_per_second=4,
            )
            self.progress.start()
            self.task = self.progress.add_task("train", total=1.0, completed=snapshot.budget,
                                               **self._fields(snapshot))

    def on_note(self, message: str) -> None:
        self._print(f"note: {message}")

    def on_plan(self, plan) -> None:
        for line in plan_lines(plan):
            self._print(line)

    def on_step(self, snapshot: TrainSnapshot) -> None:
        if self.progress is not None and snapshot.step % 5 == 0:
            self.progress.update(self.task, completed=snapshot.budget, **self._fields(snapshot))

    def on_log(self, snapshot: TrainSnapshot, record: dict) -> None:
        self.train_loss = record["loss"]
        self.rate = record["chars_per_sec"]
        if self.progress is not None:
            self.progress.update(self.task, completed=snapshot.budget, **self._fields(snapshot))
        else:
            self._print(
                f"step {record['step']:>7,}  epoch {record['epoch']:6.2f}  loss {record['loss']:.4f}  "
                f"lr {record['lr']:.2e}  {format_rate(record['chars_per_sec'])} chars/s"
                f"{_on_threads(record.get('threads'))}  elapsed {format_duration(record['elapsed'])}  "
                f"left {format_duration(snapshot.time_left)}"
            )

    def on_eval(self, snapshot: TrainSnapshot, record: dict) -> None:
        self.val_text = f"val {record['val_loss']:.3f} ({record['val_bpc']:.3f} bpc)"
        line = (f"eval  step {record['step']:>7,}  val loss {record['val_loss']:.4f} nats/char  "
                f"{record['val_bpc']:.4f} bpc  best {record['best_val_loss']:.4f}  "
                f"({record['eval_seconds']:.1f}s)")
        if self.progress is not None:
            self.progress.update(self.task, **self._fields(snapshot))
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self._print(line)

    def on_save(self, snapshot: TrainSnapshot, path: Path, best: bool) -> None:
        pass

    def on_sample(self, snapshot: TrainSnapshot, text: str) -> None:
        if self.quiet:
            return
        console = self.progress.console if self.progress is not None else self.console
        console.print(f"sample at step {snapshot.step:,}:", style="bold", markup=False, highlight=False)
        console.print(shown(text, style="dim", keep="\n"), soft_wrap=True)  # its lines stay lines

    def on_replan(self, snapshot: TrainSnapshot, plan) -> None:
        why = plan.replanned
        lines = [f"planned again after {format_duration(why['elapsed'])}: training ran at "
                 f"{format_rate(why['seen_chars_per_sec'])} chars/s, not the {format_rate(why['planned_chars_per_sec'])} "
                 f"planned ({why['ratio']:.2f}x); the first plan was {why['first']}", *plan_lines(plan)]
        console = self.progress.console if self.progress is not None else self.console
        for line in lines:
            if not self.quiet:
                console.print(line, markup=False, highlight=False, soft_wrap=True)

    def on_threads(self, snapshot: TrainSnapshot, record: dict) -> None:
        rates = ", ".join(f"{n}: {format_rate(rate)}" for n, rate in record["rates"].items())
        unit = "chars/s"
        if record["before"] == record["threads"]:
            what = f"{record['work']} on {_threads(record['threads'])}"
        else:
            what = f"{record['work']} from {record['before']} to {_threads(record['threads'])}"
        line = f"threads: {what} at step {record['step']:,} ({record['reason']}; {unit} by threads {rates})"
        if self.progress is not None:
            self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            self._print(line)

    def on_warning(self, snapshot: TrainSnapshot, message: str) -> None:
        self.console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    def close(self, snapshot: TrainSnapshot | None = None) -> None:
        if self.progress is not None:
            if snapshot is not None:
                self.progress.update(self.task, completed=snapshot.budget, **self._fields(snapshot))
            self.progress.stop()
            self.progress = None
