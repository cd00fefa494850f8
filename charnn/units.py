"""Units that every layer shows the same way: nats and bits per character, and durations."""

from __future__ import annotations

import math

LN2 = math.log(2.0)


def bits(nats: float) -> float:
    """Nats per character as bits per character."""
    return nats / LN2


def format_duration(seconds: float) -> str:
    """'4:05', '1:02:03'; '?' for an unknown (infinite or NaN) duration."""
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
