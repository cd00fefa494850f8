"""`charnn bench`: speed against this machine's own ceilings and plain PyTorch loops, as tables on stderr."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..config import BenchOptions
from ..errors import CharnnError
from .app import EXIT_CODES_HELP, Device, command, default, given, stderr, write_stdout


@command(epilog=EXIT_CODES_HELP)
def bench(
    quick: Annotated[bool, typer.Option("--quick", help="A reduced set in about three minutes: 2 training "
                                        "configs, 1 and 64 streams, a 100 MB corpus, the startup times.")] = False,
    json_file: Annotated[Optional[str], typer.Option(
        "--json", help="Also write the figures as JSON to this file (- for stdout).", show_default=False)] = None,
    device: Annotated[Optional[Device], typer.Option(help=f"Where to measure. {default(BenchOptions, 'device')}",
                                                     show_default=False)] = None,
    seconds: Annotated[Optional[float], typer.Option(
        help="Seconds per timed comparison. \\[default: 4 with --quick, else 12]", show_default=False)] = None,
    corpus_mb: Annotated[Optional[list[int]], typer.Option(
        "--corpus-mb", help="Synthetic corpus sizes for the encoding and memory rows (repeatable; 0 skips them). "
                            "\\[default: 100 and 1000; 100 with --quick]", show_default=False)] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        help="Where to write the synthetic corpora. \\[default: a temporary directory]", show_default=False)] = None,
    startup_rounds: Annotated[Optional[int], typer.Option(
        help=f"Times each startup command runs (the median is shown); 0 skips them. "
             f"{default(BenchOptions, 'startup_rounds')}", show_default=False)] = None,
    busy: Annotated[bool, typer.Option(
        "--busy", help="Instead: training, evaluation and sampling beside busy neighbours (processes spinning half "
        "a core, one core, two), at one thread, all threads and charnn's policy, and the --size auto plan for a "
        "Tiny Shakespeare-sized corpus at ten minutes under each load (about 5 minutes; 15 without --quick).")] = False,
) -> None:
    """Measure training and sampling speed against this machine's own ceilings and a plain PyTorch loop.

    A table goes to stderr; --json FILE writes the same figures as JSON.
    """
    from ..bench.benchmark import run_benchmark  # noqa: PLC0415 (only this command needs it)
    from ..runtime.device import resolve_device  # noqa: PLC0415

    if seconds is not None and not (seconds > 0 and math.isfinite(seconds)):
        raise CharnnError(f"--seconds must be positive, not {seconds}")
    if corpus_mb is not None and any(mb < 0 for mb in corpus_mb):
        raise CharnnError("--corpus-mb must be >= 0")
    if json_file not in (None, "-"):
        _check_writable(Path(json_file))  # before minutes of measuring, not after
    if startup_rounds is not None and startup_rounds < 0:
        raise CharnnError(f"--startup-rounds must be >= 0, not {startup_rounds}")
    options = BenchOptions(quick=quick, seconds=seconds, workdir=workdir,
                           corpora_mb=None if corpus_mb is None else tuple(mb for mb in corpus_mb if mb > 0),
                           **given(startup_rounds=startup_rounds))
    options.device = str(resolve_device(device.value if device else options.device))
    console = stderr()
    with console.status("benchmarking") as status:
        log = lambda message: status.update(f"benchmarking: {message}")  # noqa: E731
        report = _busy(options, log) if busy else run_benchmark(options, log=log)
    for table in busy_tables(report.to_dict()) if busy else bench_tables(report.to_dict()):
        console.print(table)
    if json_file is not None:
        text = json.dumps(report.to_dict(), indent=2) + "\n"
        if json_file == "-":
            write_stdout(text.encode("ascii"))
        else:
            Path(json_file).write_text(text, encoding="utf-8")


def _busy(options: BenchOptions, log):
    import tempfile  # noqa: PLC0415

    from ..bench.busy import Plans, run_busy, synthetic_corpus  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="charnn-busy-") as tmp:
        corpus = synthetic_corpus(Path(tmp) / "corpus.txt")
        seconds = options.seconds or (4.0 if options.quick else 8.0)
        return run_busy(seconds, Plans(corpus, tries=2 if options.quick else 5), log=log)


def busy_tables(report: dict) -> list[Table]:
    """Speeds beside busy neighbours, by thread mode; the plans chosen under each load."""
    table = _table("beside busy neighbours (chars/s; each a fresh process, its probes counted)",
                   ("work", "beside", "1 thread", "all threads", "charnn's policy", "policy / better fixed"),
                   left=("work", "beside"))
    for work, loads in report["rates"].items():
        for load, r in loads.items():
            table.add_row(work, load, f"{r['1 thread']:,.0f}", f"{r['all threads']:,.0f}", f"{r['policy']:,.0f}",
                          f"{r['policy'] / max(r['1 thread'], r['all threads']):.2f}x")
    tables = [table]
    if report["plans"]:
        plans = _table("--size auto plans (a 1.1 MB corpus, --max-time 10m)", ("beside", "shapes chosen"),
                       left=("beside", "shapes chosen"))
        for load, shapes in report["plans"].items():
            plans.add_row(load, ", ".join(f"{shape} x{shapes.count(shape)}" for shape in dict.fromkeys(shapes)))
        tables.append(plans)
    return tables


def _check_writable(path: Path) -> None:
    if path.is_dir():
        raise CharnnError(f"--json {path}: is a directory")
    parent = path.parent
    if not parent.is_dir():
        raise CharnnError(f"--json {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CharnnError(f"--json {path}: cannot write there (permission denied)")


def bench_tables(report: dict) -> list[Table]:
    tables = [_ceilings_table(report["machine"], report["ceilings"]), _training_table(report["training"]),
              _sampling_table(report["sampling"])]
    if report["corpora"]:
        tables.append(_corpora_table(report["corpora"]))
    if report.get("startup"):
        tables.append(startup_table(report["startup"]))
    return tables


def _table(title: str, columns: tuple[str, ...], left: tuple[str, ...] = ()) -> Table:
    table = Table(title=title, title_justify="left")
    for name in columns:
        table.add_column(name, justify="left" if name in left else "right")
    return table


def _ceilings_table(m: dict, c: dict) -> Table:
    table = _table(f"charnn bench: {m['device']}, {m['threads']} threads, torch {m['torch']}", ("ceiling", "measured"),
                   left=("ceiling",))
    table.add_row("fp32 GEMM, torch (2048²)", f"{c['gemm_gflops_torch']:,.1f} GFLOP/s")
    if "gemm_gflops_numpy" in c:
        table.add_row("fp32 GEMM, numpy's BLAS (2048²)", f"{c['gemm_gflops_numpy']:,.1f} GFLOP/s")
    table.add_row("memory read bandwidth", f"{c['read_gb_per_sec']:,.1f} GB/s")
    if "cached_read_gb_per_sec" in c:
        table.add_row("cache read rate (the size of the sampled model's weights)",
                      f"{c['cached_read_gb_per_sec']:,.1f} GB/s")
    return table


def _training_table(rows: list[dict]) -> Table:
    mixed = next((r["mixed_precision"] for r in rows if "mixed_precision" in r), None)
    columns = ("config", "charnn fp32", "GFLOP/s", "of GEMM ceiling", "reference", "ratio",
               *((f"charnn {mixed}", f"{mixed} / fp32") if mixed else ()))
    table = _table("training (chars/s; reference: pytorch/examples word_language_model loop, fp32)", columns,
                   left=("config",))
    for r in rows:
        cells = [r["config"], f"{r['chars_per_sec']:,.0f}", f"{r['gflops']:.1f}", f"{r['ceiling_share']:.0%}",
                 f"{r['reference_chars_per_sec']:,.0f}", f"{r['ratio']:.2f}x"]
        if mixed:
            cells += [f"{r['mixed_chars_per_sec']:,.0f}", f"{r['mixed_gain']:.2f}x"] if "mixed_gain" in r else ["", ""]
        table.add_row(*cells)
    return table


def _sampling_table(rows: list[dict]) -> Table:
    table = _table("sampling (chars/s; naive: nn.LSTM on one character, .item() every step)",
                   ("model", "streams", "charnn", "of ceiling", "naive", "ratio"), left=("model",))
    for r in rows:
        share = (f"{r['bandwidth_share']:.0%} of bandwidth" if "bandwidth_share" in r
                 else f"{r['ceiling_share']:.0%} of GEMM")
        if "cached_share" in r:
            share += f", {r['cached_share']:.0%} of cache"
        table.add_row(r["model"], str(r["streams"]), f"{r['chars_per_sec']:,.0f}", share,
                      f"{r['naive_chars_per_sec']:,.0f}", f"{r['ratio']:.1f}x")
    return table


def _corpora_table(rows: list[dict]) -> Table:
    table = _table("big corpora (charnn train, 20 steps; the second run starts from the cache)",
                   ("corpus", "encode", "first run", "second run", "peak resident", "token file (mapped)"))
    for r in rows:
        table.add_row(f"{r['megabytes']:,} MB", f"{r['encode_mb_per_sec']:,.0f} MB/s", f"{r['first_start_seconds']:.1f} s",
                      f"{r['second_start_seconds']:.1f} s", f"{r['peak_rss_mb']:,.0f} MB", f"{r['token_file_mb']:,.0f} MB")
    return table


def startup_table(rows: list[dict]) -> Table:
    """Whole processes: the median of the rounds (seconds), and with a checkout before a change, its figures."""
    before = any("before_seconds" in r for r in rows)
    columns = ("command", "median", "spread", *(("before", "speedup") if before else ()), "goal")
    table = _table(f"startup (whole processes, median of {rows[0]['rounds']} runs each, taking turns)", columns,
                   left=("command",))
    for r in rows:
        cells = [r["command"], f"{r['seconds']:.2f} s", f"{r['spread']:.2f} s"]
        if before:
            cells += [f"{r['before_seconds']:.2f} s" if "before_seconds" in r else "",
                      f"{r['speedup']:.1f}x" if "speedup" in r else ""]
        cells.append(f"<= {r['goal_seconds']:.2f} s" if "goal_seconds" in r else "")
        table.add_row(*cells)
    return table
