"""`charnn runs`, `charnn info` and `charnn plot`: runs read back, as tables and charts on stderr or JSON; and
`charnn export`: a run's weights as a safetensors file, which loads without pickle or PyTorch."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..data.checked import texts, whole
from ..errors import CharnnError
from ..printable import brief, printable_chars
from ..runs.history import RunSummary, list_runs, run_loss_curves
from ..runs.info import RunInfo, run_info
from ..runs.rundir import runs_root
from ..units import bits, format_duration
from .app import (EXIT_CODES_HELP, JsonFlag, ModelArgument, QuietFlag, WeightsArgument, XAxis, command, nonempty,
                  print_json, say, shown, stderr, stdout_bytes)
from .plotting import PNG_SIZE, parse_size, print_chart, save_png


@command("runs", epilog=EXIT_CODES_HELP)
def runs_command(
    root: Annotated[Optional[Path], typer.Argument(
        help="Directory holding the runs. \\[default: $CHARNN_RUNS_DIR, else runs/]", show_default=False)] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the runs: corpus, model, parameters, steps, best validation bits/char, last update; newest first.

    The run marked * is the newest (runs/latest): what sample, eval, info and plot use by default.
    """
    if root is not None and not root.is_dir():
        raise CharnnError(f"{root}: no such directory")
    where = root if root is not None else runs_root()
    summaries = list_runs(where)
    if as_json:
        print_json([s.to_dict() for s in summaries])
        return
    console = stderr()
    if not summaries:
        say(console, f"no runs under {where}/ (train one with `charnn train CORPUS`)")
        return
    console.print(_runs_table(where, summaries))
    for s in summaries:
        if s.problems:
            say(console, f"! {s.name}: {'; '.join(s.problems)}", style="yellow")
    if any(s.latest for s in summaries):
        say(console, "* the newest run: what sample, eval, info and plot use by default")


def _runs_table(where: Path, summaries: list[RunSummary]) -> Table:
    table = Table(title=f"charnn runs: {where}/", title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  padding=0)  # the box's blank divider is the gap between columns
    for name, justify in (("run", "left"), ("corpus", "left"), ("model", "left"), ("params", "right"),
                          ("steps", "right"), ("best bpc", "right"), ("updated", "right"), ("status", "left")):
        table.add_column(name, justify=justify, overflow="fold", no_wrap=name not in ("run", "corpus"))
    now = datetime.now().astimezone()
    for s in summaries:
        name = shown("* " + s.name, style="bold") if s.latest else shown("  " + s.name)
        status = Text(s.status, style="green" if s.status == "finished" else "")
        if s.problems:
            status.append(" !", style="yellow")
        table.add_row(name, shown(s.corpus or "-"), s.size or "-", _short_count(s.parameters), f"{s.steps:,}",
                      _or_dash(s.best_val_bpc, ".3f"), _ago(s.updated, now), status)
    return table


def _or_dash(value, spec: str = "") -> str:
    return "-" if value is None else format(value, spec)


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


@command("info", epilog=EXIT_CODES_HELP)
def info_command(model: WeightsArgument = None, as_json: JsonFlag = False) -> None:
    """Show a run, checkpoint or weights file in full: model, training, vocabulary, corpus, metrics so far,
    checkpoints."""
    info = run_info(nonempty(model, "MODEL"))
    if as_json:
        print_json(info.to_dict())
        return
    stderr().print(_InfoTable(info).table)


class _InfoTable:
    """`charnn info`'s table, one section at a time."""

    def __init__(self, info: RunInfo):
        self.info = info
        self.table = Table(title=f"charnn info: {info.path}", show_header=False, title_justify="left",
                           box=box.SIMPLE, show_edge=False)
        self.table.add_column(style="bold", no_wrap=True)
        self.table.add_column(overflow="fold")
        for section in (self._run, self._model, self._training, self._started, self._vocabulary, self._corpus,
                        self._metrics, self._checkpoints):
            section()

    def _section(self, name: str) -> None:
        if self.table.rows:
            self.table.add_section()
        self.table.add_row(Text(name, style="bold cyan"), "")

    def _row(self, name: str, value) -> None:
        self.table.add_row(name, value if isinstance(value, Text) else shown(value))

    def _run(self) -> None:
        info = self.info
        self._section({"run": "run", "checkpoint": "checkpoint", "weights": "weights file"}[info.kind])
        self._row("path", str(info.path))
        if info.summary is not None:
            s = info.summary
            self._row("status", s.status + (" (the newest run)" if s.latest else ""))
            self._row("updated", s.updated.strftime("%Y-%m-%d %H:%M:%S %Z") if s.updated else "-")
            if s.problems:
                self._row("problems", shown("; ".join(s.problems), style="yellow"))

    def _model(self) -> None:
        m = {key: _value(value) for key, value in self.info.model.items()}
        self._section("model")
        self._row("architecture", f"{m.get('num_layers')}x{m.get('hidden_size')} {str(m.get('cell')).upper()}, "
                                  f"embedding {m.get('embed_size')}, dropout {m.get('dropout')}"
                                  f"{', tied weights' if self.info.model.get('tie_weights') is True else ''}")
        self._row("parameters", _or_dash(self.info.parameters, ","))

    def _training(self) -> None:
        if self.info.train:
            self._section("training")
            self._row("config", "  ".join(f"{k}={_value(v)}" for k, v in self.info.train.items()))

    def _started(self) -> None:
        start = self.info.init_from
        if not start:
            return
        self._section("started from")
        self._row("model", shown(_value(start.get("source", "-"))))
        self._row("file", shown(_value(start.get("file", "-")), overflow="fold"))
        self._row("fingerprint", shown(f"sha256:{_value(start.get('sha256', '-'))}", overflow="fold"))
        added = start.get("vocab_added")
        self._row("characters added", printable_chars(added, space="␣") if isinstance(added, str) and added
                  else "none")

    def _vocabulary(self) -> None:
        info, chars = self.info, self.info.vocab_chars
        self._section("vocabulary")
        self._row("size", f"{_or_dash(info.vocab_size)} ({info.vocab.get('mode', '?')}-level)")
        self._row("characters", Text(printable_chars(chars, space="␣"), overflow="fold") if chars is not None
                  else "every byte, 0x00-0xff")
        if chars is not None and " " in chars:
            self._row("", Text("(␣ is the space; \\n a newline)", style="dim"))

    def _corpus(self) -> None:
        c = self.info.corpus
        if not c:
            return
        self._section("corpus")
        self._row("sources", Text("\n").join(map(shown, texts(c.get("sources")) or [])) or "-")
        size = {key: _or_dash(whole(c.get(key)), ",") for key in ("bytes", "tokens", "train_tokens", "val_tokens")}
        self._row("size", f"{size['bytes']} bytes, {size['tokens']} tokens ({size['train_tokens']} training, "
                          f"{size['val_tokens']} validation)")
        self._row("fingerprint", shown(f"sha256:{_value(c.get('fingerprint', '-'))}", overflow="fold"))

    def _metrics(self) -> None:
        info, p = self.info, self.info.progress
        self._section("metrics" if info.kind == "run" else "progress")
        self._row("steps", f"{p.steps:,}" + (f", {p.epochs:.2f} epochs" if p.epochs is not None else "")
                  + (f", {format_duration(p.elapsed)} of training" if p.elapsed is not None else ""))
        if info.kind != "run":
            self._row("validation", _loss_text(p.last_val_loss) + " (at this step)")
            if p.best_val_loss is not None:
                self._row("best validation", _loss_text(p.best_val_loss) + " (of the run so far)")
            return
        best_at = f" at step {p.best_step:,}" if p.best_step is not None else ""
        self._row("best validation", _loss_text(p.best_val_loss) + (best_at if p.best_val_loss is not None else ""))
        evaluations = f" ({p.evaluations} evaluation{'s' if p.evaluations != 1 else ''})" if p.evaluations else ""
        self._row("last validation", _loss_text(p.last_val_loss) + evaluations)
        self._row("last train loss", "-" if p.last_train_loss is None else f"{p.last_train_loss:.4f} nats/char")
        self._row("speed", "-" if p.chars_per_sec is None else f"{p.chars_per_sec:,.0f} chars/s (last log interval)")

    def _checkpoints(self) -> None:
        self._section("checkpoints")
        weights = [self.info.weights] if self.info.weights else []
        for c in self.info.checkpoints + weights:
            what = (shown(f"unreadable: {c.error}", style="yellow") if c.error else
                    Text(f"step {_or_dash(c.step, ',')}, validation loss {_or_dash(c.val_loss, '.4f')}"
                         f"{', resumable' if c.resumable else ''}{', without pickle' if c.role == 'weights' else ''}"))
            self._row(c.file, Text(f"{c.bytes / 1e6:,.1f} MB, ") + what)
        if not self.info.checkpoints:
            self._row("", "none yet")


def _value(value) -> str:
    """A value of a file's section as a table shows it: text as it is, anything else quoted briefly."""
    return value if isinstance(value, str) else brief(value)


def _loss_text(loss: float | None) -> str:
    return "-" if loss is None else f"{loss:.4f} nats/char = {bits(loss):.4f} bits/char"


@command("plot", epilog=EXIT_CODES_HELP)
def plot_command(
    run: Annotated[Optional[str], typer.Argument(
        help="Run directory (or a checkpoint in one). \\[default: the newest run]", show_default=False)] = None,
    x: Annotated[XAxis, typer.Option("--x", help="Against optimiser steps, or elapsed training time.")] = XAxis.step,
    png: Annotated[Optional[Path], typer.Option(
        help="Write the chart to this PNG file instead of drawing it in the terminal (needs matplotlib: "
             "pip install 'charnn[plot]').", show_default=False)] = None,
    png_size: Annotated[Optional[str], typer.Option(
        help=f"PNG size in pixels, WIDTHxHEIGHT. \\[default: {PNG_SIZE[0]}x{PNG_SIZE[1]}]", show_default=False)] = None,
    width: Annotated[Optional[int], typer.Option(
        help="Terminal chart width in characters. \\[default: the terminal's, at most 160]", show_default=False)] = None,
    height: Annotated[Optional[int], typer.Option(
        help="Terminal chart height in lines. \\[default: fits the terminal, at most 24]", show_default=False)] = None,
) -> None:
    """Plot training and validation loss (nats/char, with bits/char) against steps or time.

    Drawn on stderr with braille characters, or written to a PNG with --png.
    """
    curves = run_loss_curves(nonempty(run, "RUN"), x.value)
    # an explicit --width holds even where the console guesses 80 columns (a pipe, a file)
    console: Console = stderr(width)
    if png is not None:
        size = parse_size(png_size) if png_size is not None else PNG_SIZE
        save_png(curves, png, size)
        say(console, f"wrote {png} ({size[0]}x{size[1]})")
        return
    print_chart(console, curves, width, height)


@command("export", epilog=EXIT_CODES_HELP)
def export_command(
    model: ModelArgument = None,
    out: Annotated[Optional[str], typer.Option(
        "--out", "-o", help="Where to write it; - for stdout. \\[default: beside the checkpoint: best.pt -> "
        "best.safetensors]", show_default=False)] = None,
    quiet: QuietFlag = False,
) -> None:
    """Write a checkpoint's weights, configuration and vocabulary as a .safetensors file.

    Training writes best.safetensors beside best.pt by itself; this writes one for any checkpoint,
    including runs trained before charnn did. `charnn sample` reads it without PyTorch.
    """
    from ..runs.locate import export_weights  # noqa: PLC0415 (numpy, and PyTorch for a checkpoint)

    if out == "-":
        stdout_bytes()  # a closed stdout is an error before anything is loaded
    where, weights = export_weights(model, out)
    loss = weights.records.get("val_loss")
    what = f"step {weights.step:,}" if weights.step is not None else "no step recorded"
    if isinstance(loss, float):
        what += f", validation loss {loss:.4f} ({bits(loss):.4f} bpc)"
    say(stderr(), f"wrote {'stdout' if where == '-' else where} ({weights.config.num_layers}x"
                  f"{weights.config.hidden_size} {weights.config.cell.upper()}, {what})", quiet=quiet)
