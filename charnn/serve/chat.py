"""OpenAI's chat completions API over the completions one: a body's messages become one prompt through
the server's `ChatTemplate`, its other fields are checked as /v1/completions checks them (the same
limits, the same errors), and the answers take the shapes of `chat.completion` and
`chat.completion.chunk`.

The template: how a chat is written as a prompt for a character model, and where the model's reply
ends. A character model knows no roles or special tokens: it continues text. The default template
writes a conversation the way a play is set down (and a transcript reads in prose), which a model
trained on Shakespeare or on plain text continues with a speech:

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

from ..config import ServeConfig
from ..errors import CharnnError
from .batcher import Piece
from .completions import (FIELDS, NEUTRAL, ApiError, ParsedRequest, TextAnswers, build_request, check_prompt_length,
                          event, json_type, read_request)

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


MAX_MESSAGES = 1024  # the prompt's length is the real limit; this one keeps a flood of empty messages cheap
_ONLY_COMPLETIONS = ("prompt", "best_of", "echo", "suffix", "logprobs")  # logprobs: a number there, a boolean here
# the chat API's fields that change nothing here when left at these values
_CHAT_NEUTRAL = {**{name: value for name, value in NEUTRAL.items() if name not in _ONLY_COMPLETIONS},
                 "logprobs": False, "top_logprobs": None, "tools": None, "tool_choice": None, "functions": None,
                 "function_call": None, "response_format": None, "parallel_tool_calls": None}
# "max_completion_tokens": OpenAI's newer name for max_tokens in this API
_CHAT_FIELDS = (FIELDS - set(_ONLY_COMPLETIONS)) | {"messages", "max_completion_tokens", *_CHAT_NEUTRAL}
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_chat(body: bytes, models: list[str], limits: ServeConfig, template: ChatTemplate) -> ParsedRequest:
    """A POST /v1/chat/completions body: its messages through `template`, its settings as a completion's,
    the reply ending at the template's stop strings as well as the request's."""
    data = read_request(body, _CHAT_FIELDS, _CHAT_NEUTRAL)
    length_param = "max_tokens"
    if data.get("max_completion_tokens") is not None:
        if data.get("max_tokens") is not None:
            raise ApiError(400, "give max_completion_tokens or max_tokens, not both", param="max_tokens")
        data, length_param = {**data, "max_tokens": data["max_completion_tokens"]}, "max_completion_tokens"
    prompt = template.render(_messages(data))
    check_prompt_length(prompt, limits, "the prompt the messages make", "messages")
    return build_request(data, models, limits, [prompt], template.stop, "messages", length_param)


def _messages(data: dict) -> list[tuple[str, str]]:
    """The messages as (role, text) pairs, roles as the template names them."""
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty array of {role, content} objects, not "
                       f"{'an empty array' if messages == [] else json_type(messages)}", param="messages")
    if len(messages) > MAX_MESSAGES:
        raise ApiError(400, f"messages holds {len(messages):,}; this server takes at most {MAX_MESSAGES:,}",
                       param="messages", code="out_of_range")
    return [_message(number, message) for number, message in enumerate(messages)]


def _message(number: int, message) -> tuple[str, str]:
    where = f"messages[{number}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"{where} must be an object with role and content, not {json_type(message)}", param=where)
    for key in message:
        if key not in ("role", "content", "name"):  # a name changes nothing: the template names the roles
            raise ApiError(400, f"{where}.{key} is not supported by charnn (it takes role, content and name)",
                           param=f"{where}.{key}", code="unsupported_parameter")
    role = message.get("role")
    if role not in _ROLES:
        shown = json_type(role) if not isinstance(role, str) else repr(role[:40])
        raise ApiError(400, f"{where}.role must be one of {', '.join(_ROLES)}, not {shown}", param=f"{where}.role")
    return _ROLES[role], _content(f"{where}.content", message.get("content"))


def _content(where: str, content) -> str:
    """A message's text: a string, or an array of text parts (joined), as OpenAI's clients send either."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        if all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
               and set(part) == {"type", "text"} for part in content):
            return "".join(part["text"] for part in content)
        raise ApiError(400, f"{where} parts must be text ({{\"type\": \"text\", \"text\": ...}}): a character "
                       "model reads nothing else", param=where)
    raise ApiError(400, f"{where} must be a string or an array of text parts, not {json_type(content)}", param=where)


class ChatAnswers(TextAnswers):
    """How /v1/chat/completions answers: a `chat.completion`, or `chat.completion.chunk`s, each with one
    choice, as OpenAI streams them: first the assistant's role, then the text, then the finish reason."""

    prefix, kind, chunk_kind = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def choice(self, piece: Piece) -> dict:
        return {"index": piece.index, "message": {"role": "assistant", "content": piece.text},
                "logprobs": None, "finish_reason": piece.finish_reason}

    def delta(self, index: int, delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return event(self.head(self.chunk_kind, [choice]))

    def opening(self, choices: int) -> str:
        return "".join(self.delta(index, {"role": "assistant", "content": ""}) for index in range(choices))

    def chunk(self, pieces: list[Piece]) -> str:
        events = []
        for piece in pieces:
            if piece.text:
                events.append(self.delta(piece.index, {"content": piece.text}))
            if piece.finish_reason:
                events.append(self.delta(piece.index, {}, piece.finish_reason))
        return "".join(events)
