"""How `charnn serve` writes a chat as a prompt for a character model, and where the model's reply ends.

A character model knows no roles or special tokens: it continues text. The default template writes a
conversation the way a play is set down (and a transcript reads in prose), which a model trained on
Shakespeare or on plain text continues with a speech:

    {system}                      the system message, if any, as a first paragraph

    User:
    {user}

    Assistant:
    {assistant}

    Assistant:
                                  <- the model writes the reply from here

The reply ends at a blank line (the end of a speech in a play, of a paragraph in prose) or at a line
that begins the user's next turn, besides the request's own stop strings.

`--chat-template FILE` changes it: a JSON object with any of these keys (those left out keep the
default), read as data, never run:

    {"system": {"prefix": "", "suffix": "\\n\\n"},
     "user": {"prefix": "User:\\n", "suffix": "\\n\\n"},
     "assistant": {"prefix": "Assistant:\\n", "suffix": "\\n\\n"},
     "reply": "Assistant:\\n",
     "stop": ["\\n\\n", "\\nUser:"]}

Each message is its role's prefix, its content and its suffix, in order; then `reply`. `stop`: 0 to
16 non-empty strings. A "developer" message (OpenAI's newer name for a system message) is written as one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from ..errors import CharnnError

ROLES = ("system", "user", "assistant")
MAX_TEMPLATE_STOPS = 16


@dataclass(frozen=True)
class Turn:
    """What a role's message is written between."""

    prefix: str
    suffix: str


@dataclass(frozen=True)
class ChatTemplate:
    """Messages into a prompt, and the stop strings that end the reply (see the module's docstring)."""

    system: Turn = Turn("", "\n\n")
    user: Turn = Turn("User:\n", "\n\n")
    assistant: Turn = Turn("Assistant:\n", "\n\n")
    reply: str = "Assistant:\n"  # after the messages: the model's turn begins
    stop: tuple[str, ...] = ("\n\n", "\nUser:")  # the reply ends before these

    def render(self, messages: list[tuple[str, str]]) -> str:
        """(role, content) pairs, roles among ROLES, as the prompt the model continues."""
        turns = {role: getattr(self, role) for role in ROLES}
        return "".join(turns[role].prefix + content + turns[role].suffix for role, content in messages) + self.reply

    def text(self) -> str:
        """Every character the template itself writes (a model must know them all to be prompted with it)."""
        return "".join(turn.prefix + turn.suffix for turn in (self.system, self.user, self.assistant)) + self.reply

    def missing(self, chars: str) -> list[str]:
        """The template's characters that are not in `chars` (a character vocabulary), in order."""
        return sorted(set(self.text()) - set(chars))


def load_template(path: Path) -> ChatTemplate:
    """A --chat-template file; a CharnnError naming the file and its first mistake, in one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise CharnnError(f"--chat-template {path}: cannot read it ({reason})") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise CharnnError(f"--chat-template {path}: not JSON ({err})") from None
    try:
        return _template(data)
    except ValueError as err:
        raise CharnnError(f"--chat-template {path}: {err}") from None


def _template(data) -> ChatTemplate:
    """The template a file's JSON describes; ValueError with what is wrong."""
    known = [f.name for f in fields(ChatTemplate)]
    if not isinstance(data, dict):
        raise ValueError("must be a JSON object with any of the keys " + ", ".join(known))
    for key in data:
        if key not in known:
            raise ValueError(f"unknown key {key!r} (it takes {', '.join(known)})")
    template = ChatTemplate()
    for role in ROLES:
        if role in data:
            template = replace(template, **{role: _turn(role, data[role])})
    if "reply" in data:
        template = replace(template, reply=_string("reply", data["reply"]))
    if "stop" in data:
        template = replace(template, stop=_stops(data["stop"]))
    return template


def _turn(role: str, value) -> Turn:
    if not isinstance(value, dict) or not set(value) <= {"prefix", "suffix"}:
        raise ValueError(f'{role} must be an object like {{"prefix": "{role.title()}:\\n", "suffix": "\\n\\n"}} '
                         "(keys prefix and suffix only)")
    default = getattr(ChatTemplate, role)
    return Turn(_string(f"{role}.prefix", value.get("prefix", default.prefix)),
                _string(f"{role}.suffix", value.get("suffix", default.suffix)))


def _string(name: str, value) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {json.dumps(value)[:40]}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} holds a lone surrogate (\\ud800-\\udfff): not text") from None
    return value


def _stops(value) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_TEMPLATE_STOPS:
        raise ValueError(f"stop must be an array of at most {MAX_TEMPLATE_STOPS} strings")
    stops = tuple(_string("stop", stop) for stop in value)
    if "" in stops:
        raise ValueError("stop strings must not be empty (an empty one would end every reply at once)")
    return stops
