"""Text for people from names and files charnn does not control: shown, never obeyed by the terminal.

A run directory, a corpus path, a value in config.json or a weights file's metadata may hold any
character. Printed raw, ESC ] 0 ; ... sets the terminal's title, ESC [ 2 J clears the screen, a
carriage return or newline forges a line. Shown through `printable`, each reads as its escape
(`\\x1b]0;...`, `\\n`). What may be printed as it is, is what Python calls printable
(`str.isprintable`): every character but control and format characters, separators other than the
space, surrogates, private-use and unassigned code points.

`brief` quotes a value read from a file in a message: a file may hold a 10 MB string, lists nested
900 deep or a number of 10,000 digits, and a message stays one short line whatever it holds.
"""

from __future__ import annotations

import reprlib

_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\0": "\\0"}


def escape(char: str) -> str:
    """One character as an escape: `\\n`, `\\x1b`, `\\u200b`, `\\U000e0001`."""
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, keep: str = "") -> str:
    """`text` with every character a terminal would act on or hide shown as its escape; those in `keep`
    stay (a sample's newlines, where its lines are the point)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c in keep else escape(c) for c in text)


def printable_chars(chars: str, space: str = " ") -> str:
    """A vocabulary as one readable line: as `printable`, with a backslash as `\\\\` (the pair of
    characters `\\n` and the newline differ) and the space as `space`."""
    return "".join(space if c == " " else "\\\\" if c == "\\" else c if c.isprintable() else escape(c) for c in chars)


class _Brief(reprlib.Repr):
    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict = 3, 6, 6, 4
        self.maxstring = self.maxother = self.maxlong = 40

    def repr_int(self, x, level):
        if x.bit_length() > 128:  # repr refuses numbers of over 4,300 digits
            return f"<a {x.bit_length():,}-bit number>"
        return super().repr_int(x, level)


_BRIEF = _Brief()


def brief(value) -> str:
    """A value read from a file, quoted for a message: its repr, cut short and a few levels deep."""
    return printable(_BRIEF.repr(value))
