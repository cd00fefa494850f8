"""The OpenAI completions API's shapes, without a web framework: a request body checked into a
`CompletionRequest`, and the responses, stream chunks and errors as the official clients expect them.

Every mistake in a request is an `ApiError`: an HTTP status and OpenAI's error object
({"error": {"message", "type", "param", "code"}}) naming the field and what is wrong with it.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

from ..config import ServeConfig
from ..generate.settings import LIMITS, SamplingConfig, SettingError, check
from .batcher import CompletionRequest, Piece

MAX_STOPS = 16  # OpenAI allows 4; characters are cheap to check
# fields the official clients may send that change nothing here, when left at these values
_NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "logprobs": None, "suffix": None,
            "logit_bias": None, "echo": False}
# the sampling settings the API has, by field: their limits are charnn.generate.settings'
_SETTINGS = {limit.param: name for name, limit in LIMITS.items() if limit.param}
_SAMPLING = [name for name in SamplingConfig.__dataclass_fields__ if LIMITS[name].param]
_FIELDS = {"model", "prompt", "stop", "stream", "stream_options", "user", *_SETTINGS, *_NEUTRAL}


class ApiError(Exception):
    """A request the server refuses: the status and OpenAI's error object."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class ParsedRequest:
    """A checked request: which model, what to generate, and how to answer."""

    model: str
    completion: CompletionRequest
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage


def parse_completion(body: bytes, models: list[str], limits: ServeConfig) -> ParsedRequest:
    """A POST /v1/completions body, checked against the served models and the limits."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError(400, "the body nests arrays or objects too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {_json_type(data)}", code="invalid_json")
    _require_unicode(data)
    for name in data:
        if name not in _FIELDS:
            raise ApiError(400, f"unrecognized request argument: {name}", param=name, code="unknown_parameter")
    for name, neutral in _NEUTRAL.items():
        if data.get(name, neutral) not in (neutral, None, 0, {}):
            raise ApiError(400, f"{name} is not supported by charnn (leave it out or at {json.dumps(neutral)})",
                           param=name, code="unsupported_parameter")
    model = _model(data, models)
    try:  # each setting's limits, a server's narrowing some: user -> server default -> charnn's default
        completion = CompletionRequest(
            prompt=_prompt(data, limits), sampling=_sampling(data), stop=_stop(data),
            max_tokens=check("length", _setting(data, "max_tokens", limits.default_max_tokens), 1, limits.max_tokens),
            n=check("num_samples", _setting(data, "n", 1), high=limits.max_n), seed=check("seed", _setting(data, "seed")))
    except SettingError as err:
        raise ApiError(400, err.api_message, param=err.param, code=None if err.wrong_type else "out_of_range") from None
    stream = _bool(data, "stream")
    options = data.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise ApiError(400, "stream_options must be an object, and only with stream: true", param="stream_options")
    include_usage = bool(options and _bool(options, "include_usage"))
    return ParsedRequest(model, completion, stream, include_usage)


def _require_unicode(data: dict) -> None:
    """Every string in the body, keys included, is text: JSON's \\ud800 escapes can name half of a
    surrogate pair, which no UTF-8 answer could repeat back."""
    pending = [(name, name, value) for name, value in data.items()]
    while pending:
        field, key, value = pending.pop()
        for text in (key, value):
            if isinstance(text, str) and not _encodable(text):
                raise ApiError(400, f"{ascii(field)[1:-1]} holds a lone surrogate (\\ud800-\\udfff): not text",
                               param=ascii(field)[1:-1], code="invalid_unicode")
        if isinstance(value, dict):
            pending += [(field, inner, item) for inner, item in value.items()]
        elif isinstance(value, list):
            pending += [(field, None, item) for item in value]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _model(data: dict, models: list[str]) -> str:
    model = data.get("model")
    if model is None:
        return models[0]  # the first model served is the default
    if not isinstance(model, str):
        raise ApiError(400, f"model must be a string, not {_json_type(model)}", param="model")
    if model not in models:
        raise ApiError(404, f"the model {model!r} does not exist; this server has {', '.join(models)}",
                       param="model", code="model_not_found")
    return model


def _prompt(data: dict, limits: ServeConfig) -> str:
    prompt = data.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one prompt, as some clients send it
    if not isinstance(prompt, str):
        raise ApiError(400, f"prompt must be a string (one prompt per request), not {_json_type(prompt)}",
                       param="prompt")
    if len(prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"prompt has {len(prompt):,} characters; this server takes at most "
                       f"{limits.max_prompt_chars:,}", param="prompt", code="prompt_too_long")
    return prompt


def _setting(data: dict, field: str, default=None):
    """A setting's value as a request gives it (JSON's 2.0 is a whole number), else `default`."""
    value = data.get(field)
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer() and LIMITS[_SETTINGS[field]].whole:
        return int(value)
    return value


def _bool(data: dict, name: str) -> bool:
    value = data.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"{name} must be true or false, not {_json_type(value)}", param=name)
    return value


def _sampling(data: dict) -> SamplingConfig:
    given = {name: _setting(data, LIMITS[name].param) for name in _SAMPLING}
    if given["top_k"] == 0:
        given["top_k"] = None  # 0 turns it off, as in transformers
    return SamplingConfig(**{name: value for name, value in given.items() if value is not None}).validate()


def _stop(data: dict) -> tuple[str, ...]:
    stop = data.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise ApiError(400, f"stop must be a string or an array of strings, not {_json_type(stop)}", param="stop")
    if len(stops) > MAX_STOPS or any(s == "" for s in stops):
        raise ApiError(400, f"stop takes 1 to {MAX_STOPS} non-empty strings", param="stop", code="out_of_range")
    return tuple(stops)


# --- answers ---------------------------------------------------------------------------------


def completion_id() -> str:
    return f"cmpl-{uuid.uuid4().hex}"


def _choice(piece: Piece) -> dict:
    return {"text": piece.text, "index": piece.index, "finish_reason": piece.finish_reason, "logprobs": None}


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """Counted in characters (bytes with a byte-level model): charnn's tokens."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def completion_response(ident: str, model: str, choices: list[Piece], counts: dict) -> dict:
    return {"id": ident, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [_choice(piece) for piece in choices], "usage": counts}


def stream_chunk(ident: str, model: str, pieces: list[Piece], counts: dict | None = None) -> str:
    """One server-sent event: the new text of some choices (or, with `counts` and no pieces, the usage)."""
    chunk = {"id": ident, "object": "text_completion", "created": int(time.time()), "model": model,
             "choices": [_choice(piece) for piece in pieces]}
    if counts is not None:
        chunk["usage"] = counts
    return f"data: {json.dumps(chunk)}\n\n"


STREAM_END = "data: [DONE]\n\n"
