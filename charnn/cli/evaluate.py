"""`charnn eval`: a model scores text; a table on stderr or JSON on stdout, and pictures on request."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import CharnnError
from ..runs.rundir import RunDir, looks_like_checkpoint
from ..runtime.threads import resolve_threads
from ..units import bits
from .app import (EXIT_CODES_HELP, DeviceOption, JsonFlag, ThreadsOption, command, nonempty, print_json, say, stderr,
                  write_stdout)

if TYPE_CHECKING:  # the modules that score text import PyTorch: only `charnn eval` itself loads them
    from ..runs.locate import LoadedModel
    from ..evaluate.score import EvalText

PICTURES = "Pictures"
UNKNOWN_POLICY = "skipped: left out of the text, neither fed to the model nor scored"


@command("eval", epilog=EXIT_CODES_HELP)
def eval_command(
    paths: Annotated[Optional[list[str]], typer.Argument(
        help="[RUN_DIR_OR_CHECKPOINT] FILE...: text to score (- for stdin). With no file, the run's own "
             "validation text. With no model, the newest run.", show_default=False, metavar="[MODEL] [FILE]...")] = None,
    as_json: JsonFlag = False,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", help="Run directory, checkpoint or .safetensors file to evaluate.", show_default=False)] = None,
    device: DeviceOption = None,
    threads: ThreadsOption = None,
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
    from ..runs.locate import open_model  # noqa: PLC0415
    from ..runtime.device import torch_thread_policy  # noqa: PLC0415
    from ..evaluate.score import evaluate, text_to_score  # noqa: PLC0415
    from ..evaluate.trace import find_neurons, parse_neuron  # noqa: PLC0415
    from .show import neuron_table  # noqa: PLC0415

    if show_chars < 0:
        raise CharnnError(f"--show-chars must be >= 0, not {show_chars}")
    if html_file == "-" and as_json:
        raise CharnnError("--html - and --json both want stdout", hint="write the page to a file")
    paths = [nonempty(path, "FILE") for path in paths or []]
    if model is None and paths and paths[0] != "-" and _is_model(Path(paths[0])):
        model = paths.pop(0)
    for path in paths:
        if path != "-" and RunDir.is_run(path):
            raise CharnnError(f"{path}: a run directory, not text to score",
                              hint="name one model: first, or with --model; then the files to score")
        if path != "-" and Path(path).is_file() and _is_model(Path(path)):
            raise CharnnError(f"{path}: a model (checkpoint or weights file), not text to score",
                              hint="name one model: first, or with --model; then the files to score")
    choice = resolve_threads(threads)
    loaded = open_model(nonempty(model, "--model"), device.value if device else "auto")
    unit = parse_neuron(neuron, loaded.model.config) if neuron is not None else None
    text = text_to_score(paths, loaded.vocab, loaded.path, loaded.payload)
    policy = torch_thread_policy(loaded.model.head.weight.device, choice)
    result = evaluate(loaded.model, text.tokens, threads=policy)
    report = {"loss": result.loss, "bpc": result.bpc, "perplexity": result.perplexity, "chars": result.chars,
              "unknown_chars": text.unknown, "unknown_policy": UNKNOWN_POLICY, "checkpoint": str(loaded.path),
              "sources": text.sources, "text": text.kind}
    console = stderr()
    if show or html_file is not None or unit is not None:
        picture = _Picture(loaded, text, show_chars, unit)
        picture.draw(console, terminal=show or (unit is not None and html_file is None), html_file=html_file)
    if find_units:
        found = find_neurons(loaded.model, loaded.vocab, text.tokens)
        report["neurons"] = found.to_dict()
        console.print(neuron_table(found))
    if as_json:
        print_json(report, indent=None)
        return
    table = Table(title=f"charnn eval: {loaded.path}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in (("characters scored", f"{result.chars:,}"), ("loss (nats/char)", f"{result.loss:.4f}"),
                        ("bits per character", f"{result.bpc:.4f}"), ("perplexity", f"{result.perplexity:.3f}"),
                        ("unknown characters", f"{text.unknown:,} (skipped: neither fed nor scored)")):
        table.add_row(name, value)
    console.print(table)


class _Picture:
    """The first `show_chars` characters, coloured by surprisal or by one unit, on stderr and/or as HTML."""

    def __init__(self, loaded: LoadedModel, text: EvalText, show_chars: int, unit):
        from ..evaluate.trace import trace_text  # noqa: PLC0415

        self.loaded, self.text = loaded, text
        self.shown = text.tokens[:show_chars] if show_chars else text.tokens
        self.trace = trace_text(loaded.model, self.shown, neuron=unit)
        self.summary = [f"text: {', '.join(map(str, text.sources))}",
                        f"characters 1-{len(self.shown):,} of {len(text.tokens):,} drawn (--show-chars); "
                        f"{bits(self.trace.mean_loss):.3f} bits per character on them"]

    def draw(self, console: Console, terminal: bool, html_file: str | None) -> None:
        from .show import heat_text, legend  # noqa: PLC0415

        if terminal:
            for line in self.summary:
                say(console, line)
            console.print(legend(self.trace), soft_wrap=True)
            console.print(heat_text(self.trace, self.loaded.vocab), soft_wrap=True)
            console.print()
        if html_file is not None:
            self._write_html(console, html_file)

    def _write_html(self, console: Console, html_file: str) -> None:
        from ..evaluate.render import html_page  # noqa: PLC0415

        page = html_page(self.trace, self.loaded.vocab, f"charnn eval: {self.loaded.path}", self.summary)
        if html_file == "-":
            write_stdout(page.encode("utf-8"))
            return
        try:
            Path(html_file).write_text(page, encoding="utf-8")
        except OSError as err:
            raise CharnnError(f"--html {html_file}: cannot write ({err.strerror or err})") from None
        say(console, f"wrote {html_file}")


def _is_model(path: Path) -> bool:
    """A run directory, a checkpoint or a .safetensors weights file: what eval loads, never what it scores."""
    from ..model.weights import is_weights_file  # noqa: PLC0415

    return looks_like_checkpoint(path) or (path.is_file() and is_weights_file(path))
