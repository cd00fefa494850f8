"""A request's text, from a batcher's worker thread to its client: the API's answers.

The worker posts each hand-out's new text to a `Mailbox`, which wakes the event loop once for everything
posted since its last wake-up (a step of 32 requests posts 32 pieces); a `CompletionStream` is one
request's text as an async iterator, which counts what its client has taken so that a client that stops
reading pauses its request (charnn.serve.batcher) instead of piling text up; the prompts of one API request
are one `CompletionStream`. `Api` answers the API's requests with them, as plain ASGI in front of FastAPI:
FastAPI's middleware, routing and request objects had cost a worker half of its CPU a request, which a
model's step shares the cores with (README, "How fast").
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Callable, Sequence

from ..errors import CharnnError
from .batcher import Batcher, CompletionRequest, Job, Piece
from .chat import ChatAnswers
from .completions import STREAM_END, ApiError, TextAnswers, usage
from .guard import respond

CONNECTION = "charnn.connection"  # the scope key where `charnn.serve.connections` leaves a request's connection
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]  # proxies must not hold the stream back


class ClientLeft(Exception):
    """The client of a `CompletionStream` went away."""


class Mailbox:
    """Items for an event loop's queues, posted from other threads and handed over in one wake-up of the
    loop for everything posted since the last, not one per item (a step of 32 requests posts 32)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self._lock = loop, threading.Lock()
        self._items: list[tuple[asyncio.Queue, object]] = []
        self._scheduled = False

    def post(self, queue: asyncio.Queue, item) -> None:
        with self._lock:
            self._items.append((queue, item))
            if self._scheduled:
                return
            self._scheduled = True
        self.loop.call_soon_threadsafe(self._hand_over)

    def _hand_over(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
        for queue, item in items:
            queue.put_nowait(item)


class CompletionStream:
    """A submitted request's text as it is made, for asyncio code: `async for pieces in stream`
    gives the new text of each step (several steps' text merged when the reader is slower than the
    worker); `cancel()` takes the request out of the batch (a client that went away).

    Several requests (the prompts of one API request) make one stream, each its own job in the batch:
    request p's choice j is choice p * n + j of the stream, as OpenAI numbers the choices of a list of
    prompts (n: each request's own, so with equal n exactly that)."""

    def __init__(self, batcher: Batcher, requests: CompletionRequest | Sequence[CompletionRequest],
                 mailbox: Mailbox | None = None, whole: bool = False):
        """`whole`: the text comes once, when every choice is done (for `collect`), not step by step."""
        mailbox = mailbox or Mailbox(asyncio.get_running_loop())
        self.requests = (requests,) if isinstance(requests, CompletionRequest) else tuple(requests)
        self._queue: asyncio.Queue = asyncio.Queue()
        self._batcher = batcher
        self.choices = sum(request.n for request in self.requests)
        self._open = self.choices  # choices not yet finished
        self._offsets = [sum(request.n for request in self.requests[:number]) for number in range(len(self.requests))]
        self.generated = 0  # characters drawn over every choice
        self.jobs: list[Job] = []
        try:
            for number, request in enumerate(self.requests):
                self.jobs.append(batcher.submit(request, self._poster(mailbox, number), paced=not whole, whole=whole))
        except BaseException:  # a later prompt's characters: the earlier ones leave the batch
            self.cancel()
            raise

    def _poster(self, mailbox: Mailbox, number: int) -> Callable[[object], None]:
        return lambda item: mailbox.post(self._queue, (number, item))

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> list[Piece]:
        if self._open == 0:
            raise StopAsyncIteration
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        for number, _ in items:
            self.jobs[number].taken += 1
        if any(job.streams is not None and job.caught_up for job in self.jobs):  # perhaps paused: may go on now
            self._batcher.wake()
        for _, item in items:
            if isinstance(item, BaseException):
                self._open = 0
                raise item
        merged = _merge(items, self._offsets)
        self._open -= sum(1 for piece in merged if piece.finish_reason)
        if self._open == 0:
            self.generated = sum(choice.generated for job in self.jobs for choice in job.choices)
        return merged

    def cancel(self) -> None:
        for job in self.jobs:
            self._batcher.cancel(job)

    def lose(self) -> None:
        """The client went away: the requests leave the batch, and whoever iterates gets `ClientLeft`."""
        self.cancel()
        self._queue.put_nowait((0, ClientLeft()))

    async def collect(self) -> list[Piece]:
        """Every choice's whole text and finish reason, in choice order."""
        texts = [Piece(index, "") for index in range(self.choices)]
        async for pieces in self:
            for piece in pieces:
                texts[piece.index].text += piece.text
                texts[piece.index].finish_reason = piece.finish_reason
        return texts


def _merge(items: list[tuple[int, list[Piece]]], offsets: list[int]) -> list[Piece]:
    """One piece per choice, numbered in the stream (the job's offset and its index), in choice order:
    its texts joined, the last finish reason."""
    merged: dict[int, Piece] = {}
    for number, pieces in items:
        for piece in pieces:
            index = offsets[number] + piece.index
            if index in merged:
                merged[index].text += piece.text
                merged[index].finish_reason = piece.finish_reason
            else:
                merged[index] = Piece(index, piece.text, piece.finish_reason)
    return [merged[index] for index in sorted(merged)]


class Api:
    """ASGI: POST /v1/completions and /v1/chat/completions answered here, every other request passed to
    `app`. `server` is the `charnn.serve.server.CompletionServer` whose checks and limits each request
    goes through: the key, a slot of --max-concurrent, the body's size, then the parse."""

    def __init__(self, app, server):
        self.app, self.server = app, server
        self.routes = {"/v1/completions": (server.parse_completion, TextAnswers),
                       "/v1/chat/completions": (server.parse_chat, ChatAnswers)}

    async def __call__(self, scope, receive, send) -> None:
        route = self.routes.get(scope["path"]) if scope["type"] == "http" else None
        if route is None:
            return await self.app(scope, receive, send)
        try:
            if scope["method"] != "POST":
                raise ApiError(405, f"{scope['method']} {scope['path']}: Method Not Allowed")
            await self.answer(scope, receive, send, *route)
        except ApiError as err:  # before the answer began: it is the answer
            extra = {429: [(b"retry-after", b"1")], 405: [(b"allow", b"POST")]}.get(err.status, [])
            await respond(send, err.status, err.body(), extra)

    async def answer(self, scope, receive, send, parse: Callable, answers: type[TextAnswers]) -> None:
        server = self.server
        server.authorize(header(scope, b"authorization"))
        slot = server.take_slot(scope)
        try:
            announced = header(scope, b"content-length") or ""
            parsed = parse(await read_body(receive, announced, server.config.max_body_bytes))
            stream = server.start(parsed)
        except BaseException:
            slot.free()
            raise
        connection = scope.get(CONNECTION)  # the requests leave the batch the moment their client does
        forget = None if connection is None else connection.when_lost(stream.lose)
        answer = stream_answer if parsed.stream else whole_answer
        try:  # the slot is freed before the answer's last bytes: its client may send the next request at once
            await answer(send, stream, answers(parsed.model), server, parsed, slot.free)
        finally:
            if forget is not None:
                forget()
            stream.cancel()
            slot.free()


def header(scope, name: bytes) -> str | None:
    """A request header's first value, as text (its bytes as latin-1, as Starlette decodes them)."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def read_body(receive, announced: str, limit: int) -> bytes:
    """The body, refused (413) as soon as it passes the limit, announced or not."""
    if announced.isdigit() and int(announced) > limit:
        raise ApiError(413, f"the body has {int(announced):,} bytes; this server takes at most {limit:,}",
                       code="body_too_large")
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":  # the client left, or its body's deadline passed
            raise ApiError(408, "the request's body did not arrive", code="request_timeout")
        body += message.get("body", b"")
        if len(body) > limit:
            raise ApiError(413, f"the body passes this server's limit of {limit:,} bytes", code="body_too_large")
        if not message.get("more_body", False):
            return bytes(body)


def json_bytes(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def whole_answer(send, stream: CompletionStream, answers: TextAnswers, server, parsed,
                       done: Callable[[], None]) -> None:
    """The whole answer as one JSON object (nothing, if its client has gone); `done()` before it is sent."""
    try:
        choices = await stream.collect()
    except ClientLeft:
        return
    except CharnnError as err:  # the server stopped under it
        raise ApiError(503, str(err), kind="server_error") from None
    body = json_bytes(answers.whole(choices, usage(server.prompt_length(parsed), stream.generated)))
    done()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def stream_answer(send, stream: CompletionStream, answers: TextAnswers, server, parsed,
                        done: Callable[[], None]) -> None:
    """The answer as server-sent events, each step's text as it comes, then `data: [DONE]` (after `done()`)."""
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})

    async def event(text: str) -> None:
        await send({"type": "http.response.body", "body": text.encode(), "more_body": True})

    try:
        opening = answers.opening(stream.choices)
        if opening:
            await event(opening)
        async for pieces in stream:
            await event(answers.chunk(pieces))
        if parsed.include_usage:
            await event(answers.usage_chunk(usage(server.prompt_length(parsed), stream.generated)))
        done()
        await event(STREAM_END)
    except ClientLeft:
        return
    except CharnnError as err:  # the server stopped under it
        await event(f"data: {json.dumps(ApiError(503, str(err), kind='server_error').body())}\n\n")
    await send({"type": "http.response.body", "body": b""})
