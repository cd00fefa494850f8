"""A choice's characters as the text a client is handed: up to a stop string (left out) or a length.

`charnn serve` draws a character a stream a step and hands text out in pieces, so what might be the start
of a stop string is held back until the characters after it say whether it is one.
"""

from __future__ import annotations

import codecs
from typing import Sequence

from ..data.vocab import Vocab


class ChoiceText:
    """One choice's characters into text: ends at a stop string (left out) or after max_tokens;
    holds back only a tail that might begin a stop string."""

    def __init__(self, vocab: Vocab, max_tokens: int, stop: Sequence[str]):
        self.vocab, self.max_tokens, self.stop = vocab, max_tokens, tuple(stop)
        self.longest = max(map(len, self.stop), default=1)  # the longest stop string's length
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace") if vocab.mode == "byte" else None
        self.held = ""  # made, not yet handed out
        self.generated = 0  # characters drawn, a stop string's included
        self.finish_reason: str | None = None

    def add(self, token: int) -> str:
        """The text that can be handed out after `token`; sets `finish_reason` when the choice ends."""
        self.generated += 1
        piece = self.decoder.decode(bytes((token,))) if self.decoder else self.vocab.chars[token]
        if not self.stop and self.generated < self.max_tokens:  # no stop string to hold text back for: the
            return piece  # common case, 64 times a step at 64 streams
        self.held += piece
        for stop in self.stop:
            found = self.held.find(stop)
            if found >= 0:
                self.finish_reason = "stop"
                return self._release(found)
        if self.generated >= self.max_tokens:
            self.finish_reason = "length"
            if self.decoder:
                self.held += self.decoder.decode(b"", final=True)
            return self._release(len(self.held))
        return self._release(len(self.held) - self._maybe_stop())

    @property
    def left(self) -> int:
        """Characters still to draw, at most."""
        return self.max_tokens - self.generated

    def extend(self, tokens: list[int]) -> str:
        """`add` for each of `tokens` until the choice ends (the rest are dropped)."""
        if not self.stop and self.generated + len(tokens) < self.max_tokens and not self.decoder:
            self.generated += len(tokens)  # the common case, a string of plain characters
            return "".join([self.vocab.chars[token] for token in tokens])
        text = ""
        for token in tokens:
            text += self.add(token)
            if self.finish_reason:
                break
        return text

    def _maybe_stop(self) -> int:
        """The length of the longest tail of the held text that begins a stop string."""
        for length in range(min(len(self.held), self.longest - 1), 0, -1):
            tail = self.held[-length:]
            if any(stop.startswith(tail) for stop in self.stop):
                return length
        return 0

    def _release(self, end: int) -> str:
        text, self.held = self.held[:end], ("" if self.finish_reason else self.held[end:])
        return text
