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
NEUTRAL = {"presence_penalty": 0, "frequency_penalty": 0, "best_of": 1, "logprobs": None, "suffix": None,
            "logit_bias": None, "echo": False}
# the sampling settings the API has, by field: their limits are charnn.generate.settings'
_SETTINGS = {limit.param: name for name, limit in LIMITS.items() if limit.param}
_SAMPLING = [name for name in SamplingConfig.__dataclass_fields__ if LIMITS[name].param]
FIELDS = {"model", "prompt", "stop", "stream", "stream_options", "user", *_SETTINGS, *NEUTRAL}


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
    """A checked request: which model, what to generate for each prompt, and how to answer."""

    model: str
    completions: tuple[CompletionRequest, ...]  # one per prompt, in the request's order
    stream: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage
    prompt_param: str = "prompt"  # the field the prompts came from, named when one holds unknown characters


def parse_completion(body: bytes, models: list[str], limits: ServeConfig) -> ParsedRequest:
    """A POST /v1/completions body, checked against the served models and the limits."""
    data = read_request(body, FIELDS, NEUTRAL)
    return build_request(data, models, limits, _prompts(data, limits))


def read_request(body: bytes, fields: set[str], neutral: dict) -> dict:
    """A body as a JSON object of known fields, those charnn has no use for at their neutral values."""
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError(400, "the body nests arrays or objects too deeply", code="invalid_json") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the body is not valid JSON ({err})", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {json_type(data)}", code="invalid_json")
    _require_unicode(data)
    for name in data:
        if name not in fields:
            raise ApiError(400, f"unrecognized request argument: {name}", param=name, code="unknown_parameter")
    for name, value in neutral.items():
        if data.get(name, value) not in (value, None, 0, {}):
            raise ApiError(400, f"{name} is not supported by charnn (leave it out or at {json.dumps(value)})",
                           param=name, code="unsupported_parameter")
    return data


def build_request(data: dict, models: list[str], limits: ServeConfig, prompts: list[str], stop: tuple[str, ...] = (),
                  prompt_param: str = "prompt", length_param: str = "max_tokens") -> ParsedRequest:
    """The checked request for `prompts` (each gets the body's n choices, and its seed as if sent alone):
    the body's settings, and `stop` besides its own stop strings. `length_param`: the field that gave
    data["max_tokens"], as errors name it."""
    model = _model(data, models)
    most_n = limits.max_n // len(prompts)  # choices over every prompt are held to --max-n, as n alone is
    try:  # each setting's limits, a server's narrowing some: user -> server default -> charnn's default
        sampling, seed = _sampling(data), check("seed", _setting(data, "seed"))
        max_tokens = check("length", _setting(data, "max_tokens", limits.default_max_tokens), 1, limits.max_tokens)
        n = check("num_samples", _setting(data, "n", 1), high=most_n)
    except SettingError as err:
        param = length_param if err.param == "max_tokens" else err.param
        message = param + err.api_message[len(err.param):]
        if err.param == "n" and len(prompts) > 1 and not err.wrong_type:
            message += f" ({limits.max_n} choices at most in one request: {len(prompts)} prompts x n)"
        raise ApiError(400, message, param=param, code=None if err.wrong_type else "out_of_range") from None
    stop = _stop(data) + stop
    completions = tuple(CompletionRequest(prompt=prompt, sampling=sampling, stop=stop, max_tokens=max_tokens, n=n,
                                          seed=seed) for prompt in prompts)
    stream = _bool(data, "stream")
    options = data.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise ApiError(400, "stream_options must be an object, and only with stream: true", param="stream_options")
    include_usage = bool(options and _bool(options, "include_usage"))
    return ParsedRequest(model, completions, stream, include_usage, prompt_param)


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


def json_type(value) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _model(data: dict, models: list[str]) -> str:
    model = data.get("model")
    if model is None:
        return models[0]  # the first model served is the default
    if not isinstance(model, str):
        raise ApiError(400, f"model must be a string, not {json_type(model)}", param="model")
    if model not in models:
        raise ApiError(404, f"the model {model!r} does not exist; this server has {', '.join(models)}",
                       param="model", code="model_not_found")
    return model


def _prompts(data: dict, limits: ServeConfig) -> list[str]:
    """The prompt, or the list of prompts (one request for all, each with its own choices)."""
    prompt = data.get("prompt", "")
    prompts = prompt if isinstance(prompt, list) else [prompt]
    if not prompts:
        raise ApiError(400, "prompt must hold at least one prompt, not an empty array", param="prompt")
    for given in prompts:
        if isinstance(given, (int, list)) and not isinstance(given, bool):
            raise ApiError(400, "prompt must be a string or an array of strings: token ids are not taken "
                           "(charnn's tokens are characters; send the text)", param="prompt")
        if not isinstance(given, str):
            inside = " in the array" if isinstance(prompt, list) else ""
            raise ApiError(400, f"prompt must be a string or an array of strings, not {json_type(given)}{inside}",
                           param="prompt")
    if len(prompts) > limits.max_n:
        raise ApiError(400, f"prompt holds {len(prompts)} prompts; this server makes at most {limits.max_n} "
                       "choices a request", param="prompt", code="out_of_range")
    for number, given in enumerate(prompts):
        check_prompt_length(given, limits, "prompt" if len(prompts) == 1 else f"prompt {number}", "prompt")
    return prompts


def check_prompt_length(prompt: str, limits: ServeConfig, what: str, param: str) -> None:
    if len(prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"{what} has {len(prompt):,} characters; this server takes at most "
                       f"{limits.max_prompt_chars:,}", param=param, code="prompt_too_long")


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
        raise ApiError(400, f"{name} must be true or false, not {json_type(value)}", param=name)
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
        raise ApiError(400, f"stop must be a string or an array of strings, not {json_type(stop)}", param="stop")
    if len(stops) > MAX_STOPS or any(s == "" for s in stops):
        raise ApiError(400, f"stop takes 1 to {MAX_STOPS} non-empty strings", param="stop", code="out_of_range")
    return tuple(stops)


# --- answers ---------------------------------------------------------------------------------


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    """Counted in characters (bytes with a byte-level model): charnn's tokens."""
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def event(chunk: dict) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(chunk)}\n\n"


STREAM_END = "data: [DONE]\n\n"


class TextAnswers:
    """How /v1/completions answers one request: `text_completion` objects, whole or as stream chunks
    (one id and one creation time for all of them, as OpenAI's)."""

    prefix, kind, chunk_kind = "cmpl", "text_completion", "text_completion"

    def __init__(self, model: str):
        self.model, self.ident, self.created = model, f"{self.prefix}-{uuid.uuid4().hex}", int(time.time())

    def head(self, kind: str, choices: list[dict]) -> dict:
        return {"id": self.ident, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def choice(self, piece: Piece) -> dict:
        return {"text": piece.text, "index": piece.index, "finish_reason": piece.finish_reason, "logprobs": None}

    def whole(self, choices: list[Piece], counts: dict) -> dict:
        return {**self.head(self.kind, [self.choice(piece) for piece in choices]), "usage": counts}

    def opening(self, choices: int) -> str:
        """The events a stream begins with, before any text (none here)."""
        return ""

    def chunk(self, pieces: list[Piece]) -> str:
        """The new text of some choices, one event for all of them."""
        return event(self.head(self.chunk_kind, [self.choice(piece) for piece in pieces]))

    def usage_chunk(self, counts: dict) -> str:
        """The last event of a stream with include_usage: no choices, the usage."""
        return event({**self.head(self.chunk_kind, []), "usage": counts})
