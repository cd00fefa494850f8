"""The engines of `charnn serve --workers N` (N > 1): processes that sample every HTTP worker's requests.

The HTTP workers parse, check and answer requests; each sends its requests over a pipe of its own to
an engine, and an engine steps all it was sent, every worker's, as one batch per model
(`charnn.serve.batcher`). Its Python does nothing but the batchers' steps and the pipes, so no event loop
competes with a step for the GIL. The engine's side is `EngineHost`; a worker's is `Router` (which engine)
and `RemoteBatcher`, which stands where a `Batcher` stands in a server of one process (`charnn.serve.relay`
and the routes cannot tell them apart): the model's vocabulary, shape and records are the worker's own
copy, so prompts are checked and models described there, while the requests go down a pipe and their
text comes back up it, read by the worker's event loop itself (`add_reader`).

Which engine: the first, until its streams (every worker's, counted in the tally) would pass `SPILL`;
then the one with the fewest. A few streams sample fastest as one batch on all the cores (a product
split over two threads keeps each half of the weights in its core's cache); many sample fastest as a
batch a core, each engine a process of one thread, with nothing to wait for at a barrier (README, "How
fast"). An engine steps on all the cores while it is the only one with streams, on its share when not.

The messages are plain tuples. A worker sends ("submit", key, model, request, paced, whole), ("cancel",
key) and ("taken", key, steps taken by its client); an engine answers with one list a step for each
worker, of (key, pieces or ("error", message), the characters drawn per choice once the request is over,
else None). A worker whose pipe closes has gone: its requests leave the batch. An engine ends when every
worker has gone; it ignores SIGINT and SIGTERM, which are for the workers (they finish their streams,
and need the engines meanwhile), and dies with the server process (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing.connection
import os
import threading
import time
from typing import Callable

from ..errors import CharnnError
from .batcher import Batcher, CompletionRequest, Job, Piece, prompt_ids
from .tally import Tally

PUBLISH_EVERY = 0.02  # seconds between an engine's loads published for /health


class Outbox:
    """One worker's deliveries, sent as one message after each step (not one per request a step)."""

    def __init__(self, conn):
        self.conn, self.items, self.lock, self.open = conn, [], threading.Lock(), True

    def add(self, item: tuple) -> None:
        with self.lock:
            self.items.append(item)

    def flush(self) -> None:
        with self.lock:  # the batchers of several models may flush at once
            if not self.items:
                return
            items, self.items = self.items, []
            if self.open:
                try:
                    self.conn.send(items)
                except OSError:  # the worker is gone: its pipe's EOF drops its requests
                    self.open = False


class EngineHost:
    """The batchers, and the pipes of the workers whose requests they step."""

    def __init__(self, batchers: dict[str, Batcher], conns: list, tally: Tally | None = None,
                 engines: list[int] = (), cores: int | None = None):
        """`tally`, `engines` (the engines' rows) and `cores`: the cores are shared out among the engines
        that have streams (None: this engine's thread policy decides alone)."""
        self.batchers, self.conns, self.tally = batchers, list(conns), tally
        self.engines, self.cores = list(engines), cores
        self.outboxes = [Outbox(conn) for conn in self.conns]
        self.jobs: dict[tuple[int, int], tuple[Batcher, Job]] = {}  # (worker, key): requests in flight
        for batcher in batchers.values():
            batcher.after_step = self.flush
            batcher.hand_over = None  # nothing here needs the GIL for long: the pipes' thread gets it at every product
            if cores is not None and tally is not None:
                batcher.sharing = self.share

    def share(self) -> int | None:
        """The threads of a step while other engines have streams too: this one's share of the cores."""
        busy = sum(1 for row in self.engines if self.tally.value("routed", row) > 0)
        return None if busy <= 1 else max(1, self.cores // busy)

    def flush(self) -> None:
        for outbox in self.outboxes:
            outbox.flush()

    def serve(self) -> None:
        """Until every worker has closed its pipe; the batchers' load published in the tally meanwhile."""
        tally = self.tally
        for batcher in self.batchers.values():
            batcher.start()
        waiting, published, idle = dict(zip(self.conns, range(len(self.conns)))), 0.0, True
        try:
            while waiting:  # idle (nothing in flight, and so published): asleep until a message comes
                ready = multiprocessing.connection.wait(list(waiting), timeout=None if idle else PUBLISH_EVERY)
                for conn in ready:
                    self._read(conn, waiting)
                idle = idle and not ready
                if tally is not None and time.monotonic() - published >= PUBLISH_EVERY:
                    load = self.load()
                    tally.publish(load)
                    published, idle = time.monotonic(), not any(load.values())
        finally:
            for batcher in self.batchers.values():
                batcher.stop(timeout=5)

    def _read(self, conn, waiting: dict) -> None:
        worker = waiting[conn]
        try:
            while conn.poll():
                self.handle(worker, conn.recv())
        except (EOFError, OSError):  # the worker has gone
            del waiting[conn]
            self.outboxes[worker].open = False
            for (owner, key), (batcher, job) in list(self.jobs.items()):
                if owner == worker:
                    batcher.cancel(job)
                    self.jobs.pop((owner, key), None)

    def handle(self, worker: int, message: tuple) -> None:
        kind, key = message[0], message[1]
        if kind == "submit":
            self._submit(worker, key, *message[2:])
        elif (found := self.jobs.get((worker, key))) is not None:
            batcher, job = found
            if kind == "cancel":
                self.jobs.pop((worker, key), None)
                batcher.cancel(job)
            elif kind == "taken":
                job.taken = message[2]
                if job.streams is not None and job.caught_up:  # perhaps paused: may go on now
                    batcher.wake()

    def _submit(self, worker: int, key: int, model: str, request, paced: bool, whole: bool) -> None:
        outbox, held = self.outboxes[worker], []
        batcher = self.batchers[model]

        def known(job: Job) -> None:  # before the batcher's thread can deliver anything of it
            held.append(job)
            self.jobs[(worker, key)] = (batcher, job)

        def deliver(item) -> None:  # from the batcher's thread
            job = held[0]
            over = isinstance(item, BaseException) or job.finished
            if isinstance(item, BaseException):
                item = ("error", getattr(item, "message", str(item)))
            outbox.add((key, item, [choice.generated for choice in job.choices] if over else None))
            if over:
                self.jobs.pop((worker, key), None)

        try:
            batcher.submit(request, deliver, paced, whole, before=known)
        except CharnnError as err:  # the worker checked the prompt; the engine may be stopping
            self.jobs.pop((worker, key), None)
            outbox.add((key, ("error", err.message), [0] * request.n))
            outbox.flush()

    def load(self) -> dict:
        loads = [batcher.load() for batcher in self.batchers.values()]
        return {field: sum(load[field] for load in loads) for field in ("requests", "streams", "paused")}


# --- a worker's side ---------------------------------------------------------------------------

# A paced request tells the engine how many hand-outs of text its client has taken after this many more:
# the engine pauses it at MAX_BACKLOG hand-outs ahead, and resumes it at half that, so a little slack
# costs nothing, while a message a hand-out for each streamed request would cost the engine's GIL.
TAKEN_EVERY = 4
SPILL = 16  # streams the first engine takes before the others get any
GONE = "the server's engine process has stopped"


class Drawn:
    """A choice's count of characters drawn, as the engine reports it when the request is over."""

    def __init__(self):
        self.generated = 0


class RemoteJob:
    """A request in the engine: what `charnn.serve.relay` reads of a `Job`."""

    streams = None  # never paused here: the engine pauses and resumes it (see `taken`)
    caught_up = True

    def __init__(self, link: EngineLink, key: int, n: int, deliver: Callable, paced: bool):
        self.link, self.key, self.deliver, self.paced = link, key, deliver, paced
        self.choices = [Drawn() for _ in range(n)]
        self._taken = self._told = 0

    @property
    def taken(self) -> int:
        return self._taken

    @taken.setter
    def taken(self, steps: int) -> None:
        self._taken = steps
        if self.paced and steps - self._told >= TAKEN_EVERY and self.key in self.link.jobs:
            self._told = steps
            self.link.send(("taken", self.key, steps))


class EngineLink:
    """One worker's pipe to one engine, and its requests in flight there."""

    def __init__(self, conn, release: Callable[[int], None]):
        self.conn, self.release, self.jobs, self.keys = conn, release, {}, itertools.count()
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        """Read the engine's messages in this event loop from now on (once, whatever the models)."""
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
            self.loop.add_reader(self.conn.fileno(), self._read)
            # uvloop (libuv) makes a watched descriptor non-blocking; a message longer than the pipe
            # holds (a whole answer of 8 x 3,000 characters) arrives in parts, which `recv` waits for
            os.set_blocking(self.conn.fileno(), True)

    def send(self, message: tuple) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise CharnnError(GONE) from None

    def submit(self, model: str, request: CompletionRequest, deliver: Callable, paced: bool, whole: bool) -> RemoteJob:
        job = RemoteJob(self, next(self.keys), request.n, deliver, paced)
        self.send(("submit", job.key, model, request, paced, whole))
        self.jobs[job.key] = job
        return job

    def cancel(self, job: RemoteJob) -> None:
        if self.jobs.pop(job.key, None) is not None:
            self.release(len(job.choices))
            try:
                self.send(("cancel", job.key))
            except CharnnError:
                pass  # nothing left to cancel

    def _read(self) -> None:
        try:
            while self.conn.poll():
                for key, item, generated in self.conn.recv():
                    self._hand(key, item, generated)
        except (EOFError, OSError):  # the engine died: the server stops every worker
            self.loop.remove_reader(self.conn.fileno())
            for job in list(self.jobs.values()):
                self.release(len(job.choices))
                job.deliver(CharnnError(GONE))
            self.jobs.clear()

    def _hand(self, key: int, item: list[Piece] | tuple, generated: list[int] | None) -> None:
        job = self.jobs.get(key)
        if job is None:
            return  # cancelled meanwhile
        if generated is not None:  # the request is over
            del self.jobs[key]
            self.release(len(job.choices))
            for choice, count in zip(job.choices, generated):
                choice.generated = count
        job.deliver(CharnnError(item[1]) if isinstance(item, tuple) else item)


class Router:
    """A worker's pipes to the engines, and the engine each new request goes to (the module says which)."""

    def __init__(self, conns: list, tally: Tally, rows: list[int]):
        self.tally, self.rows = tally, rows  # the engines' rows of the tally, where their streams are counted
        self.links = [EngineLink(conn, self._releaser(row)) for conn, row in zip(conns, rows)]

    def _releaser(self, row: int) -> Callable[[int], None]:
        return lambda streams: self.tally.add("routed", -streams, row)

    def start(self) -> None:
        for link in self.links:
            link.start()

    def submit(self, model: str, request: CompletionRequest, deliver: Callable, paced: bool, whole: bool) -> RemoteJob:
        place = self.tally.spill("routed", self.rows, request.n, SPILL)
        try:
            return self.links[place].submit(model, request, deliver, paced, whole)
        except CharnnError:
            self.tally.add("routed", -request.n, self.rows[place])
            raise


class Described:
    """A model's shape without its weights: what a worker needs of an engine's model (the weights it
    loaded are let go, so N workers do not hold N more copies of a large model)."""

    def __init__(self, config):
        self.config = config


class RemoteBatcher:
    """A model served by the engine processes, as the routes see a `Batcher`."""

    def __init__(self, local: Batcher, router: Router):
        self.router, self.engine = router, Described(local.engine.config)
        self.vocab, self.name, self.records = local.vocab, local.name, local.records

    def start(self) -> RemoteBatcher:
        self.router.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Nothing to stop here: an engine ends when every worker's pipe to it has closed."""

    def prompt_ids(self, prompt: str):
        return prompt_ids(self.vocab, self.engine.config, prompt)

    def submit(self, request: CompletionRequest, deliver: Callable, paced: bool = False,
               whole: bool = False) -> RemoteJob:
        self.prompt_ids(request.prompt)  # unknown characters are refused here, before the engine hears of it
        return self.router.submit(self.name, request, deliver, paced, whole)

    def cancel(self, job: RemoteJob) -> None:
        job.link.cancel(job)

    def wake(self) -> None:
        """The engine wakes its batcher itself when a paused request's client has caught up."""

    def load(self) -> dict:
        """Nothing of its own: the engines publish every worker's requests in their rows of the tally."""
        return {"requests": 0, "streams": 0, "paused": 0}
