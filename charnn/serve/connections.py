"""The connections of `charnn serve`, each held to deadlines and limits, and uvicorn run with them.

uvicorn closes an idle keep-alive connection, but a request that never finishes arriving, or a
client that stops reading, would hold its connection (a file descriptor, buffers) for good. Here
every connection is under one deadline at a time, as the parser sees the client's side of it:

    connected, or the first byte of a request  -> its headers within header_timeout
    headers in                                 -> its body within body_timeout
    a response the client does not read        -> dropped after write_timeout (the text waits, paused)

A request cut off by a deadline is answered 408 in OpenAI's error shape, one whose line and headers
pass MAX_HEAD_BYTES 431, bytes that are not HTTP/1.1 400; more connections than the limit (the
server's, counted with its other workers in a `Tally`, and this process's file limit) are answered 503
and closed at once; when the process runs out of file descriptors, accepting waits a second and the log
says so once a minute, never a traceback per connection.

The parser is llhttp's (uvicorn's httptools protocol): with h11's, parsing and answering a completion of
one character took a worker 0.49 ms of CPU against 0.36 (README, "How fast"), CPU that a step of the model
shares the cores with.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import json
import os
import resource
import socket
import sys
import time
from dataclasses import dataclass
from http import HTTPStatus
from typing import Callable

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ..config import ServeConfig
from ..errors import CharnnError
from ..printable import printable
from .completions import ApiError
from .relay import CONNECTION
from .tally import Tally

FD_RESERVE = 32  # descriptors kept for the process itself: models, pipes, the event loop, stdio
# the kernel's send buffer per connection: without a size it grows to megabytes for a client that does
# not read, and the write deadline starts only once it is full; text at a reader's pace needs far less
SEND_BUFFER = 128 * 1024
NOTE_EVERY = 60.0  # seconds between two log lines of one kind
MAX_HEAD_BYTES = 16 * 1024  # a request's line and headers (h11's limit, which uvicorn's other parser lacks)
# glibc's mallopt parameters: blocks from MAP_FROM up are mapped from the system and given back when freed;
# below, the heap, which keeps up to TRIM_FROM free at its top rather than give it back and fault it in again
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, MAP_FROM, TRIM_FROM = -1, -3, 2**20, 16 * 2**20


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    write_timeout: float
    max_connections: int

    @classmethod
    def of(cls, config: ServeConfig) -> ConnectionLimits:
        """The limits, with the connection count held under what the file-descriptor limit allows."""
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        allowed = config.max_connections if soft == resource.RLIM_INFINITY else min(
            config.max_connections, soft - FD_RESERVE)
        if allowed < 1:
            raise CharnnError(f"the file limit ({soft} open files) leaves no room for connections",
                              hint="raise it with `ulimit -n`")
        return cls(config.header_timeout, config.body_timeout, config.write_timeout, allowed)


class Notes:
    """Lines for the server's log about what clients make it do, each kind at most once a minute."""

    def __init__(self, every: float = NOTE_EVERY):
        self.every, self.last = every, {}

    def say(self, kind: str, text: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.every) < self.every:
            return
        self.last[kind] = now
        print(f"charnn: serve: {printable(text)}", file=sys.stderr, flush=True)


def error_bytes(status: int, message: str, code: str) -> bytes:
    """A whole HTTP response, OpenAI's error object as its body, closing the connection: for what is
    answered below the application (no request was read, or not all of one)."""
    body = json.dumps(ApiError(status, message, code=code).body()).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode() + body


def connection_class(limits: ConnectionLimits, notes: Notes, tally: Tally) -> type:
    """uvicorn's httptools protocol, under `limits` (uvicorn makes one instance per connection)."""
    return type("Connection", (Connection,), {"limits": limits, "notes": notes, "tally": tally})


class Connection(HttpToolsProtocol):
    limits: ConnectionLimits
    notes: Notes
    tally: Tally

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.phase: str | None = None  # the deadline the connection is under: "headers", "body" or None
        self.waiting: str | None = "headers"  # what of a request the parser waits for (None: no request is open)
        self.head_bytes = 0  # bytes received since the last request's headers were complete
        self.head_size = 0  # the bytes of the current request's line and headers, as the parser reads them
        self.deadline: asyncio.TimerHandle | None = None
        self.write_deadline: asyncio.TimerHandle | None = None
        self.lost: list[Callable[[], None]] = []
        self.counted = False  # whether it holds one of the server's connections in the tally
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # each chunk leaves as it is written
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        # the file limit binds this process; --max-connections the server, all its workers together
        self.counted = len(self.connections) <= self.limits.max_connections and self.tally.take(
            "connections", self.limits.max_connections)
        if not self.counted:
            self.notes.say("connections", f"{self.limits.max_connections} connections are open, the limit "
                                          "(--max-connections, or the file limit): refusing more")
            self._refuse(503, "the server has too many connections open; retry shortly", "server_busy")
            return
        self._watch()

    def when_lost(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` the moment the connection closes (a request's slot is freed then); returns what
        forgets it, for a request that ended first: a keep-alive connection would otherwise hold on to
        every request it ever carried."""
        self.lost.append(callback)
        return lambda: self._forget(callback)

    def _forget(self, callback: Callable[[], None]) -> None:
        if callback in self.lost:
            self.lost.remove(callback)

    def data_received(self, data: bytes) -> None:
        if self.waiting != "body":
            self.head_bytes += len(data)
        super().data_received(data)
        if self.head_bytes > MAX_HEAD_BYTES and not self.transport.is_closing():  # a head not yet complete
            self.send_400_response("")
            return
        self._watch()

    # the parser's callbacks, as it reads a request: what the connection waits for next, and the head's size
    # (an exception in a callback stops the parser, and uvicorn then calls `send_400_response`)
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.waiting, self.head_size = "headers", 0

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        self._count(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        super().on_header(name, value)
        self._count(len(name) + len(value) + 4)

    def _count(self, size: int) -> None:
        self.head_size += size
        if self.head_size > MAX_HEAD_BYTES:
            raise ValueError("the head is too large")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.waiting, self.head_bytes = "body", 0
        self.scope[CONNECTION] = self  # the request's task has not started yet: it will find its connection

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.waiting = None

    def connection_lost(self, exc) -> None:
        super().connection_lost(exc)
        for handle in (self.deadline, self.write_deadline):
            if handle is not None:
                handle.cancel()
        if self.counted:
            self.counted = False
            self.tally.give("connections")
        callbacks, self.lost = self.lost, []
        for callback in callbacks:
            callback()

    def send_400_response(self, msg: str) -> None:
        """The parser could not read the request, or its head is too large: OpenAI's shape, no line in the log."""
        if max(self.head_bytes, self.head_size) > MAX_HEAD_BYTES:
            self._refuse(431, f"the request's line and headers pass {MAX_HEAD_BYTES:,} bytes", "headers_too_large")
        else:
            self._refuse(400, "the request is not valid HTTP/1.1", "invalid_request")

    # --- the deadlines --------------------------------------------------------------------------

    def _watch(self) -> None:
        """Put the connection under the deadline for the part of a request it is waiting for."""
        if self.transport.is_closing():
            return
        phase = self.waiting  # between requests, uvicorn's keep-alive deadline holds instead
        if phase == self.phase:
            return
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.phase = phase
        if phase is not None:
            seconds = self.limits.header_timeout if phase == "headers" else self.limits.body_timeout
            self.deadline = self.loop.call_later(seconds, self._expired, phase, seconds)

    def _expired(self, phase: str, seconds: float) -> None:
        self.deadline = None
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the application reads no more of it and answers no one
            self.cycle.message_event.set()
        answered = self.cycle is not None and self.cycle.response_started and not self.cycle.response_complete
        if answered:
            self.transport.close()
        else:
            self._refuse(408, f"the request's {phase} did not arrive within {seconds:g} s", "request_timeout")

    def _refuse(self, status: int, message: str, code: str) -> None:
        self.transport.write(error_bytes(status, message, code))
        self.transport.close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_deadline is None:
            self.write_deadline = self.loop.call_later(self.limits.write_timeout, self._too_slow)

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None

    def _too_slow(self) -> None:
        """The client read nothing for write_timeout: drop it (what it was sent is lost with it)."""
        self.write_deadline = None
        self.transport.abort()


def quiet_accept_errors(loop: asyncio.AbstractEventLoop, notes: Notes) -> None:
    """Out of file descriptors, asyncio stops accepting for a second and logs a traceback each time:
    one line a minute instead. Everything else goes to the loop's usual handler."""
    usual = loop.get_exception_handler()

    def handler(loop, context: dict) -> None:
        err = context.get("exception")
        if isinstance(err, OSError) and err.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            notes.say("accept", f"cannot accept connections ({os.strerror(err.errno)}): new ones wait; "
                                "raise the file limit (ulimit -n) or lower --max-connections")
            return
        if usual is not None:
            usual(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def map_large_blocks() -> None:
    """Keep glibc's malloc mapping blocks of 1 MiB and more (a storm's batch, its prompts' reads) from the
    system and giving them back when freed. Left alone, it raises that threshold after the first such free,
    and every later batch's arrays come from a heap it rarely returns: a storm of 64 requests of 16 choices
    left the server 20-33 MiB larger for good. Not lower: a step's arrays at 64 streams (256 KiB) mapped and
    faulted in anew each step, and a heap trimmed at glibc's 128 KiB (fixed once a threshold is set) grown
    again each step, cost an engine 25% of its speed at 8 streams. Elsewhere: nothing to do."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(M_MMAP_THRESHOLD, MAP_FROM)
        libc.mallopt(M_TRIM_THRESHOLD, TRIM_FROM)
    except (OSError, AttributeError):
        pass


def run(app, sock: socket.socket, config: ServeConfig, tally: Tally | None = None) -> None:
    """uvicorn serving `app` on `sock` with these connections, until SIGTERM or Ctrl-C: then it stops
    accepting, requests in flight have `grace_seconds` to finish, and what is still open is closed (its
    requests see their clients leave: nothing is cancelled mid-step, so no traceback). `tally`: the
    connections counted with the other workers' (default: this process's alone)."""
    import uvicorn  # noqa: PLC0415 (the serve extra)

    class Server(uvicorn.Server):
        async def startup(self, sockets=None) -> None:
            quiet_accept_errors(asyncio.get_running_loop(), notes)
            await super().startup(sockets)

        async def shutdown(self, sockets=None) -> None:
            timer = asyncio.get_running_loop().call_later(config.grace_seconds, self.close_connections)
            try:
                await super().shutdown(sockets)
            finally:
                timer.cancel()

        def close_connections(self) -> None:
            for connection in list(self.server_state.connections):
                connection.transport.abort()

    map_large_blocks()
    notes = Notes()
    limits = ConnectionLimits.of(config)
    settings = uvicorn.Config(app, lifespan="on", log_level="error", access_log=False, ws="none", loop="auto",
                              proxy_headers=False,  # no proxy's word is taken for who the client is
                              http=connection_class(limits, notes, tally or Tally()), timeout_graceful_shutdown=config.grace_seconds + 5)
    Server(settings).run(sockets=[sock])
