"""OpenAI's chat completions API over the completions one: a body's messages become one prompt through
the server's `ChatTemplate`, its other fields are checked as /v1/completions checks them (the same
limits, the same errors), and the answers take the shapes of `chat.completion` and
`chat.completion.chunk`.
"""

from __future__ import annotations

from ..config import ServeConfig
from .batcher import Piece
from .chat_template import ChatTemplate
from .completions import (FIELDS, NEUTRAL, ApiError, ParsedRequest, TextAnswers, build_request, check_prompt_length,
                          event, json_type, read_request)

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
