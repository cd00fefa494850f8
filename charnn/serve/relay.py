"""A request's text, handed from a batcher's worker thread to asyncio: what the server's routes iterate.

The worker posts each step's new text to a `Mailbox`, which wakes the event loop once for everything
posted since its last wake-up (a step of 32 requests posts 32 pieces); a `CompletionStream` is one
request's text as an async iterator, which counts what its client has taken so that a client that stops
reading pauses its request (charnn.serve.batcher) instead of piling text up.
"""

from __future__ import annotations

import asyncio
import threading

from .batcher import Batcher, CompletionRequest, Piece


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
    worker); `cancel()` takes the request out of the batch (a client that went away)."""

    def __init__(self, batcher: Batcher, request: CompletionRequest, mailbox: Mailbox | None = None):
        mailbox = mailbox or Mailbox(asyncio.get_running_loop())
        self._queue: asyncio.Queue = asyncio.Queue()
        self._batcher, self.request = batcher, request
        self._open = request.n  # choices not yet finished
        self.generated = 0  # characters drawn over every choice
        self.job = batcher.submit(request, lambda item: mailbox.post(self._queue, item), paced=True)

    def __aiter__(self) -> CompletionStream:
        return self

    async def __anext__(self) -> list[Piece]:
        if self._open == 0:
            raise StopAsyncIteration
        items = [await self._queue.get()]
        while not self._queue.empty():
            items.append(self._queue.get_nowait())
        self.job.taken += len(items)
        if self.job.streams is not None and self.job.caught_up:  # perhaps paused: it may go on now
            self._batcher.wake()
        for item in items:
            if isinstance(item, BaseException):
                self._open = 0
                raise item
        merged = _merge([piece for item in items for piece in item])
        self._open -= sum(1 for piece in merged if piece.finish_reason)
        if self._open == 0:
            self.generated = sum(choice.generated for choice in self.job.choices)
        return merged

    def cancel(self) -> None:
        self._batcher.cancel(self.job)

    async def collect(self) -> list[Piece]:
        """Every choice's whole text and finish reason, in choice order."""
        texts = [Piece(index, "") for index in range(self.request.n)]
        async for pieces in self:
            for piece in pieces:
                texts[piece.index].text += piece.text
                texts[piece.index].finish_reason = piece.finish_reason
        return texts


def _merge(pieces: list[Piece]) -> list[Piece]:
    """One piece per choice, in choice order: its texts joined, the last finish reason."""
    merged: dict[int, Piece] = {}
    for piece in pieces:
        if piece.index in merged:
            merged[piece.index].text += piece.text
            merged[piece.index].finish_reason = piece.finish_reason
        else:
            merged[piece.index] = Piece(piece.index, piece.text, piece.finish_reason)
    return [merged[index] for index in sorted(merged)]
