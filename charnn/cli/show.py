"""The terminal side of `charnn eval --show/--neuron/--find-neurons`: rich renderables for stderr.

Only the CLI imports this module; the colours and glyphs come from `charnn.evaluate.render`, so the terminal
and the HTML page draw the same picture.
"""

from __future__ import annotations

from rich.color import Color
from rich.style import Style
from rich.table import Table
from rich.text import Text

from ..data.vocab import Vocab
from ..evaluate.render import RGB, colours, glyph, ink_for, legend_stops, legend_title, token_chars
from ..evaluate.trace import FEATURES, CharTrace, NeuronReport


def _style(background: RGB) -> Style:
    return Style(color=Color.from_rgb(*ink_for(background)), bgcolor=Color.from_rgb(*background))


def legend(trace: CharTrace) -> Text:
    text = Text(legend_title(trace) + "  ")
    for label, rgb in legend_stops(trace):
        text.append(f" {label} ", style=_style(rgb))
    return text


def heat_text(trace: CharTrace, vocab: Vocab) -> Text:
    """The text, each character on its colour; a newline shows as ↵ and then really ends the line."""
    text = Text()
    for char, rgb in zip(token_chars(vocab, trace.tokens), colours(trace)):
        text.append(glyph(char), style=_style(rgb))
        if char == "\n":
            text.append("\n")
    return text


def neuron_table(report: NeuronReport) -> Table:
    table = Table(title=f"units that track features of the text ({report.chars:,} characters; "
                        "LAYER:UNIT counted from 0; try --neuron LAYER:UNIT)", title_justify="left")
    for name, justify in (("feature", "left"), ("unit", "right"), ("correlation", "right"), ("what", "left")):
        table.add_column(name, justify=justify)
    for feature, matches in report.best.items():
        if not matches:
            table.add_row(feature, "-", "-", "never changes in this text")
            continue
        for rank, match in enumerate(matches):
            table.add_row(feature if rank == 0 else "", f"{match.layer}:{match.unit}", f"{match.correlation:+.3f}",
                          FEATURES[feature] if rank == 0 else "")
    return table
