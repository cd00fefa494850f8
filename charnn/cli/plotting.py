"""Drawing loss curves: a braille chart for the terminal (rich) and a PNG (matplotlib, optional).

The data comes from `charnn.runs.metrics.loss_curves`; this module only draws it. matplotlib is imported only
when a PNG is asked for, so the terminal chart needs nothing beyond rich.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.text import Text

from ..errors import CharnnError
from ..runs.metrics import LossCurves
from ..units import LN2, format_duration
from .app import shown

TRAIN_STYLE = "bright_blue"  # matplotlib's C0 and C1, so the terminal and the PNG agree
VAL_STYLE = "dark_orange"
MARKER = "●"  # validation points: they stay distinguishable from the train line without colour
# dot bit of each (column, row) of a braille cell, 2 columns x 4 rows
_BRAILLE_BITS = ((0x01, 0x02, 0x04, 0x40), (0x08, 0x10, 0x20, 0x80))
_CHROME_LINES = 6  # title, axis names, x axis, x labels, x axis name, legend
MIN_WIDTH, MIN_HEIGHT = 40, 12
PNG_SIZE = (1200, 700)  # pixels


# --- ticks and labels ---------------------------------------------------------------------------


def nice_step(low: float, high: float, count: int, integer: bool = False) -> float:
    """The smallest round spacing (1, 2, 2.5 or 5 x 10^k) that puts at most about `count` ticks in [low, high];
    with `integer`, a whole number and never 2.5 (steps are counted in whole numbers)."""
    raw = (high - low) / max(count, 1)
    if integer:
        raw = max(raw, 1.0)
    magnitude = 10 ** math.floor(math.log10(raw))
    multiples = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    return next(m * magnitude for m in multiples if m * magnitude >= raw * (1 - 1e-9))


def nice_ticks(low: float, high: float, count: int, step: float | None = None) -> list[float]:
    """Round values `step` apart (default: `nice_step`) within [low, high]."""
    if not high > low:
        return [low]
    step = step or nice_step(low, high, count)
    first = math.ceil(low / step - 1e-9) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def time_ticks(high: float, count: int) -> list[float]:
    """Round durations in seconds (10 s, 1 min, 5 min, 1 h...) from 0 to `high`."""
    raw = high / max(count, 1)
    steps = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 4 * 3600, 6 * 3600, 12 * 3600, 86400)
    step = next((s for s in steps if s >= raw), 86400 * math.ceil(raw / 86400))
    return [i * step for i in range(int(high // step) + 1)]


def format_number(value: float, step: float) -> str:
    """A tick label with as many decimals as the tick spacing needs."""
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 2
    if step > 0 and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1  # 2.5, 0.25
    return f"{value:,.{decimals}f}"


# --- the braille canvas ---------------------------------------------------------------------------


@dataclass
class Canvas:
    """Cells of braille dots, one layer per series, mapping data coordinates to dots."""

    width: int  # cells
    height: int
    x_range: tuple[float, float]
    y_range: tuple[float, float]

    def __post_init__(self):
        self.layers: list[tuple[str, dict[tuple[int, int], int]]] = []
        self.markers: dict[tuple[int, int], str] = {}

    def dot(self, x: float, y: float) -> tuple[int, int]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        col = round((x - x0) / (x1 - x0) * (2 * self.width - 1)) if x1 > x0 else 0
        row = round((y1 - y) / (y1 - y0) * (4 * self.height - 1)) if y1 > y0 else 2 * self.height
        return min(max(col, 0), 2 * self.width - 1), min(max(row, 0), 4 * self.height - 1)

    def line(self, xs: list[float], ys: list[float], style: str) -> None:
        cells: dict[tuple[int, int], int] = {}
        points = [self.dot(x, y) for x, y in zip(xs, ys)]
        segments = list(zip(points, points[1:])) or [(p, p) for p in points[:1]]  # one point: one dot
        for (c0, r0), (c1, r1) in segments:
            steps = max(abs(c1 - c0), abs(r1 - r0), 1)
            for i in range(steps + 1):  # every dot between the two points
                col, row = round(c0 + (c1 - c0) * i / steps), round(r0 + (r1 - r0) * i / steps)
                key = (col // 2, row // 4)
                cells[key] = cells.get(key, 0) | _BRAILLE_BITS[col % 2][row % 4]
        self.layers.append((style, cells))

    def mark(self, xs: list[float], ys: list[float], style: str) -> None:
        for x, y in zip(xs, ys):
            col, row = self.dot(x, y)
            self.markers[(col // 2, row // 4)] = style

    def row(self, y: int) -> Text:
        text = Text()
        for x in range(self.width):
            if (x, y) in self.markers:
                text.append(MARKER, style=self.markers[(x, y)])
                continue
            bits, style = 0, None
            for layer_style, cells in self.layers:  # later layers draw over earlier ones
                if (x, y) in cells:
                    bits |= cells[(x, y)]
                    style = layer_style
            text.append(chr(0x2800 + bits) if bits else " ", style=style)
        return text


# --- the terminal chart -----------------------------------------------------------------------------


def chart_size(console: Console, width: int | None, height: int | None) -> tuple[int, int]:
    """The whole chart in characters and lines: the terminal's width, and a height that fits it."""
    if width is None:
        width = min(console.width, 160)
    if height is None:
        height = min(max(console.height - 4, MIN_HEIGHT), 24) if console.is_terminal else 20
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        raise CharnnError(f"the chart needs at least {MIN_WIDTH} columns and {MIN_HEIGHT} lines "
                          f"(got --width {width}, --height {height})")
    return width, height


def _y_axis(curves: LossCurves, rows: int) -> tuple[float, float, float]:
    """The y range, widened to the next half tick at each end so the edges are round, and the tick spacing."""
    ys = curves.train.ys + curves.val.ys
    low, high = min(ys), max(ys)
    if high - low < 1e-6:
        low, high = low - 0.05, high + 0.05
    step = nice_step(low, high, max(rows // 3, 2))  # labels about three rows apart, never touching
    half = step / 2
    return math.floor(low / half + 1e-9) * half, math.ceil(high / half - 1e-9) * half, step


def _x_range(curves: LossCurves) -> tuple[float, float]:
    xs = curves.train.xs + curves.val.xs
    return 0.0, max(max(xs), 1.0)


def legend(curves: LossCurves) -> Text:
    train, val = curves.train, curves.val
    parts = []
    if train.ys:
        parts.append(Text("⠒⠒", style=TRAIN_STYLE) + Text(" train loss"))
    if val.ys:
        best = min(range(len(val.ys)), key=val.ys.__getitem__)
        where = f"step {val.xs[best]:,.0f}" if curves.x == "step" else format_duration(val.xs[best])
        parts.append(Text(MARKER, style=VAL_STYLE) + Text(" validation loss"))
        parts.append(Text(f"best {val.ys[best]:.3f} ({val.ys[best] / LN2:.3f} bits/char) at {where}"))
    return Text("   ").join(parts)


def render_chart(curves: LossCurves, width: int, height: int) -> list[Text]:
    """The chart as lines of rich Text, `width` characters wide and `height` lines high."""
    rows = height - _CHROME_LINES
    y0, y1, y_step = _y_axis(curves, rows)
    y_ticks = nice_ticks(y0, y1, 0, step=y_step)
    left = [format_number(v, y_step) for v in y_ticks]
    right = [format_number(v / LN2, y_step / LN2) for v in y_ticks]
    left_width, right_width = max(map(len, left)), max(map(len, right))
    cols = width - left_width - right_width - 4  # " ┤" and "├ "
    canvas = Canvas(cols, rows, _x_range(curves), (y0, y1))
    if curves.train.xs:
        canvas.line(curves.train.xs, curves.train.ys, TRAIN_STYLE)
    if curves.val.xs:
        canvas.line(curves.val.xs, curves.val.ys, VAL_STYLE)
        canvas.mark(curves.val.xs, curves.val.ys, VAL_STYLE)
    tick_rows = {}
    for value, l_label, r_label in zip(y_ticks, left, right):
        tick_rows.setdefault(canvas.dot(0, value)[1] // 4, (l_label, r_label))
    lines = [shown(f"charnn plot: {curves.title}", style="bold"),
             Text(f"{'nats/char':<{width - len('bits/char')}}bits/char", style="dim")]
    for y in range(rows):
        l_label, r_label = tick_rows.get(y, ("", ""))
        line = Text()  # axis in dim, the curves in their own colours (a styled base would dim them too)
        line.append(f"{l_label:>{left_width}} " + ("┤" if l_label else "│"), style="dim")
        line.append_text(canvas.row(y))
        line.append(("├ " if r_label else "│ ") + f"{r_label:<{right_width}}", style="dim")
        lines.append(line)
    lines.extend(_x_axis(curves, canvas, left_width))
    lines.append(legend(curves))
    return lines


def _x_axis(curves: LossCurves, canvas: Canvas, indent: int) -> list[Text]:
    x0, x1 = canvas.x_range
    count = max(canvas.width // 12, 2)
    if curves.x == "step":
        ticks = nice_ticks(x0, x1, count, step=nice_step(x0, x1, count, integer=True))
    else:
        ticks = time_ticks(x1, count)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    axis = ["─"] * canvas.width
    labels = [" "] * (canvas.width + 8)
    free_from = 0  # the first column a new label may use, so labels never touch
    for value in ticks:
        col = canvas.dot(value, 0)[0] // 2
        axis[col] = "┬"
        label = format_number(value, step) if curves.x == "step" else format_duration(value)
        start = min(max(col - len(label) // 2, 0), canvas.width + 1 - len(label))
        if start >= free_from:
            labels[start:start + len(label)] = label
            free_from = start + len(label) + 1
    name = "step" if curves.x == "step" else f"training time ({'h:mm:ss' if x1 >= 3600 else 'm:ss'})"
    return [Text(" " * (indent + 1) + "└" + "".join(axis) + "┘", style="dim"),
            Text(" " * (indent + 2) + "".join(labels).rstrip(), style="dim"),
            Text(" " * (indent + 2) + name.center(canvas.width).rstrip(), style="dim")]


def print_chart(console: Console, curves: LossCurves, width: int | None = None, height: int | None = None) -> None:
    if curves.empty:
        raise CharnnError("nothing to plot yet: the run has logged no loss")
    width, height = chart_size(console, width, height)
    *chart, legend_line = render_chart(curves, width, height)
    for line in chart:
        console.print(line, no_wrap=True, overflow="crop")
    console.print(legend_line)


# --- the PNG --------------------------------------------------------------------------------------


def parse_size(text: str) -> tuple[int, int]:
    """'1200x700' -> (1200, 700)."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise CharnnError(f"--png-size must be WIDTHxHEIGHT in pixels, like 1200x700, not {text!r}") from None
    if not (200 <= width <= 10_000 and 200 <= height <= 10_000):
        raise CharnnError(f"--png-size must be between 200x200 and 10000x10000 pixels, not {text!r}")
    return width, height


def save_png(curves: LossCurves, path: Path, size: tuple[int, int] = PNG_SIZE) -> None:
    """Write the chart as a PNG of exactly `size` pixels, with matplotlib's Agg backend (no display)."""
    if curves.empty:
        raise CharnnError("nothing to plot yet: the run has logged no loss")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415 (optional dependency)
        from matplotlib.figure import Figure  # noqa: PLC0415
    except ImportError:
        raise CharnnError("--png needs matplotlib", hint="pip install 'charnn[plot]'") from None
    dpi = 100
    figure = Figure(figsize=(size[0] / dpi, size[1] / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # pyplot's global state and GUI backends are never involved
    axes = figure.add_subplot()
    minutes = curves.x == "time" and _x_range(curves)[1] > 120
    scale = 60.0 if minutes else 1.0
    train, val = curves.train, curves.val
    if train.xs:
        axes.plot([x / scale for x in train.xs], train.ys, color="C0", linewidth=1.2, label="train loss")
    if val.xs:
        best = min(range(len(val.ys)), key=val.ys.__getitem__)
        axes.plot([x / scale for x in val.xs], val.ys, "o-", color="C1", markersize=3.5, linewidth=1.5,
                  label=f"validation loss (best {val.ys[best]:.3f} = {val.ys[best] / LN2:.3f} bits/char)")
        axes.plot([val.xs[best] / scale], [val.ys[best]], "*", color="C3", markersize=12, label="best.pt")
    axes.set_xlabel("step" if curves.x == "step" else f"training time ({'minutes' if minutes else 'seconds'})")
    axes.set_ylabel("loss (nats/char)")
    axes.set_xlim(left=0)
    bits = axes.secondary_yaxis("right", functions=(lambda n: n / LN2, lambda b: b * LN2))
    bits.set_ylabel("bits/char")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper right")
    axes.set_title(f"charnn: {curves.title}")
    try:
        figure.savefig(path, format="png", dpi=dpi)
    except OSError as err:
        raise CharnnError(f"--png {path}: cannot write ({err.strerror or err})") from None
