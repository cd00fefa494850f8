"""A request's text, handed from a batcher's worker thread to asyncio: what the server's routes iterate.

The worker posts each step's new text to a `Mailbox`, which wakes the event loop once for everything
posted since its last wake-up (a step of 32 requests posts 32 pieces); a `CompletionStream` is one
request's text as an async iterator, which counts what its client has taken so that a client that stops
reading pauses its request (charnn.serve.batcher) instead of piling text up; the prompts of one API request
are one `CompletionStream`.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Callable, Sequence

from .batcher import Batcher, CompletionRequest, Job, Piece


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
