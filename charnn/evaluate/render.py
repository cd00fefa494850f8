"""Pictures of a `CharTrace`: colour scales, printable glyphs, and a self-contained HTML page.

Two pictures, as in Karpathy's "The Unreasonable Effectiveness of Recurrent Neural Networks":
surprisal, white (the model was sure) to red (it was surprised), in bits on a fixed scale so that
pictures of different texts and models compare; and one hidden unit's activation, blue (-1) through
white (0) to red (+1). Plain Python: the terminal picture (rich) lives in `charnn.show`.
"""

from __future__ import annotations

import html
import math

import numpy as np

from ..data.vocab import Vocab
from ..printable import printable
from .trace import CharTrace

MAX_BITS = 8.0  # the top of the surprisal scale: 8 bits is a 1-in-256 character, as red as it gets
RGB = tuple[int, int, int]

# colour stops, 0..1 along each scale: a light step first, so that 1-2 bits already shows
_SURPRISAL_STOPS = [(0.0, (255, 255, 255)), (0.25, (255, 214, 170)), (0.6, (245, 120, 80)), (1.0, (200, 20, 30))]
_ACTIVATION_STOPS = [(0.0, (33, 102, 172)), (0.5, (255, 255, 255)), (1.0, (178, 24, 43))]  # ColorBrewer RdBu


def _ramp(stops: list[tuple[float, RGB]], x: float) -> RGB:
    x = min(max(x, 0.0), 1.0)
    for (x0, c0), (x1, c1) in zip(stops, stops[1:]):
        if x <= x1:
            t = (x - x0) / (x1 - x0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
    return stops[-1][1]


def surprisal_colour(bits: float) -> RGB:
    """White at 0 bits to red at MAX_BITS and beyond; the first character (no prediction) is white."""
    return _ramp(_SURPRISAL_STOPS, bits / MAX_BITS) if math.isfinite(bits) else (255, 255, 255)


def activation_colour(value: float) -> RGB:
    """Blue at -1, white at 0, red at +1 (tanh activations of LSTM/GRU/RNN units)."""
    return _ramp(_ACTIVATION_STOPS, (value + 1.0) / 2.0)


def hex_colour(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def ink_for(rgb: RGB) -> RGB:
    """Black text on light backgrounds, white on dark ones."""
    r, g, b = rgb
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 110 else (255, 255, 255)


_VISIBLE = {"\n": "↵", "\t": "⇥", "\r": "␍", " ": " "}


def glyph(char: str) -> str:
    """How one character is drawn: newlines, tabs and other control characters get a visible symbol;
    the rest a terminal would act on or hide (C1 controls, format characters), their escapes."""
    if char in _VISIBLE:
        return _VISIBLE[char]
    if len(char) == 1 and (ord(char) < 32 or ord(char) == 127):
        return chr(0x2400 + ord(char)) if ord(char) < 32 else "␡"
    return printable(char)


def token_chars(vocab: Vocab, tokens) -> list[str]:
    """Each token as text; for a byte-level model, bytes that are not ASCII show as U+FFFD."""
    tokens = np.asarray(tokens).astype(np.int64)
    if vocab.mode == "byte":
        return [chr(t) if t < 128 else "\ufffd" for t in tokens.tolist()]
    return list(vocab.decode(tokens))


def colours(trace: CharTrace) -> list[RGB]:
    """The background of each character: its activation if the trace kept a unit, else its surprisal."""
    if trace.activations is not None:
        return [activation_colour(v) for v in trace.activations.tolist()]
    return [surprisal_colour(b) for b in trace.bits.tolist()]


def _quoted(vocab: Vocab, token: int) -> str:
    return f"'{vocab.token_text(int(token))}'"


def describe(trace: CharTrace, vocab: Vocab, i: int) -> str:
    """One character's tooltip: what it is, its surprisal (and activation), the model's top guesses."""
    text = _quoted(vocab, trace.tokens[i])
    if trace.activations is not None:
        text += f"  unit {trace.neuron[0]}:{trace.neuron[1]} = {trace.activations[i]:+.3f}"
    if i == 0:
        return text + "  (first character: not predicted)"
    guesses = ", ".join(f"{_quoted(vocab, t)} {p:.0%}" for t, p in zip(trace.top_ids[i].tolist(), trace.top_probs[i].tolist()))
    return f"{text}  {trace.bits[i]:.2f} bits\nmodel's guesses: {guesses}"


def legend_stops(trace: CharTrace) -> list[tuple[str, RGB]]:
    """Labelled colour samples for the legend."""
    if trace.activations is not None:
        return [(f"{v:+.1f}" if v else "0", activation_colour(v)) for v in (-1.0, -0.5, 0.0, 0.5, 1.0)]
    return [(f"{b:g}" + ("+" if b == MAX_BITS else ""), surprisal_colour(b)) for b in range(int(MAX_BITS) + 1)]


def legend_title(trace: CharTrace) -> str:
    if trace.activations is not None:
        return f"unit {trace.neuron[0]}:{trace.neuron[1]} activation"
    return "surprisal (bits)"


def legend_note(trace: CharTrace) -> str:
    """What the colours mean, in a sentence."""
    if trace.activations is not None:
        layer, unit = trace.neuron
        return (f"h of unit {unit} in layer {layer} (both counted from 0) after reading each character: "
                "blue -1, white 0, red +1")
    return ("-log2 of the probability the model gave each character: white 0 bits (what it expected), "
            f"red {MAX_BITS:g} bits or more (a 1-in-{2 ** MAX_BITS:g} surprise)")


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; background: #fff; }
h1 { font-size: 1.1em; margin: 0 0 .3em; }
p.summary { margin: .2em 0; color: #555; font-size: .9em; }
.legend { display: flex; flex-wrap: wrap; align-items: center; gap: .6em; margin: .8em 0; font-size: .85em; }
.legend .note { color: #555; }
.scale { display: flex; border: 1px solid #aaa; }
.scale span { font-family: monospace; padding: 2px 6px; min-width: 2.2em; text-align: center; }
pre.text { font: 15px/1.4 "DejaVu Sans Mono", Menlo, Consolas, monospace; white-space: pre-wrap;
           word-break: break-all; border-top: 1px solid #ddd; padding-top: .8em; margin: 0; }
pre.text span:hover { outline: 1px solid #000; }
"""


def html_page(trace: CharTrace, vocab: Vocab, title: str, summary: list[str] | None = None) -> str:
    """A self-contained HTML page (inline CSS, no scripts, nothing fetched) of the coloured text.

    Hovering over a character shows its surprisal in bits and the model's top guesses for it.
    """
    scale = "".join(f'<span style="background:{hex_colour(c)};color:{hex_colour(ink_for(c))}">{html.escape(label)}</span>'
                    for label, c in legend_stops(trace))
    spans = []
    for i, (char, rgb) in enumerate(zip(token_chars(vocab, trace.tokens), colours(trace))):
        shown = html.escape(glyph(char))
        spans.append(f'<span style="background:{hex_colour(rgb)};color:{hex_colour(ink_for(rgb))}" '
                     f'title="{html.escape(describe(trace, vocab, i))}">{shown}</span>')
        if char == "\n":
            spans.append("\n")  # the line really ends, after the visible ↵
    summary_html = "".join(f'<p class="summary">{html.escape(line)}</p>' for line in summary or [])
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n{summary_html}\n"
        f'<div class="legend"><strong>{html.escape(legend_title(trace))}</strong><div class="scale">{scale}</div>'
        f'<span class="note">{html.escape(legend_note(trace))}</span></div>\n'
        f'<pre class="text">{"".join(spans)}</pre>\n</body></html>\n'
    )
