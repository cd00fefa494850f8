"""`charnn serve --workers N`: N HTTP worker processes serving one port, and N engine processes sampling.

One process stops at about one core: its batcher thread and its event loop share one GIL, and its event
loop, a third thread on two cores, holds BLAS's two threads up at every product's barrier. So with
N > 1 the server splits the work. Each HTTP worker is a whole server to its clients: its own event loop,
Host and Origin checks, deadlines and buffers, and a copy of the models to check prompts and describe
them (`charnn.serve.server.serve_on`). Each engine (`charnn.serve.engines`) is a process that does
nothing but step batches: every worker has a pipe to every engine and sends each request to one of them
(`charnn.serve.engines`: the first engine until it has 16 streams, then the least busy), so a few clients
are sampled as one batch on all the cores and many as a batch a core. What all of them share is the port
and a `Tally`: `--max-concurrent` and `--max-connections` hold for the server as a whole, whichever
worker a client reached; each engine's streams are counted there, for the routing and for the cores'
share; and /health counts every engine's requests. A request's text depends only on its seed, so the
same seed gives the same text whichever worker and engine answer.

The port. On Linux every worker gets its own listening socket, all bound to the address with
SO_REUSEPORT, and the kernel spreads new connections evenly among them. One socket shared by all would
work as well, but asyncio accepts every connection waiting each time its socket wakes it, so a burst
of 32 clients could all land in one worker and stay there (keep-alive). The parent binds every socket
before a worker starts, so port 0 picks one port for all and a port in use is one clear error; it first
binds the address alone without SO_REUSEPORT, so a second server on the same port is refused rather
than let in beside the first. Elsewhere (where SO_REUSEPORT does not spread connections, or is missing)
the workers share one socket.

The default (`--workers auto`): one per core's worth of threads: on N cores, N workers and N engines,
each engine's thread policy choosing among all the cores while it alone has streams and keeping to its
share when others have some too; --threads (or CHARNN_THREADS or OMP_NUM_THREADS) fixes T threads an
engine, which gives N // T of each; never more than --max-concurrent. Processes rather than threads: an
engine's step never waits for the GIL, and engines sharing the cores never wait at a barrier for a
partner thread, which is what made two threads slower than one beside a busy neighbour
(`charnn.runtime.threads`). `--workers 1` is a server of one process, as before workers.

The life of the processes. They start by fork on Linux (quick: nothing is loaded yet) and spawn
elsewhere; each loads the models and says so over a pipe, and the server says it is ready once every
one has. SIGTERM or Ctrl-C: each worker is sent SIGTERM once (uvicorn takes a second SIGINT as "stop
at once"), has --grace-seconds for its streams and a few seconds more to exit, then is killed; the
engines, deaf to both signals, end when every worker's pipe has closed; the server ends as the signal
says (143 or 130). A second Ctrl-C kills them at once. A worker or engine that dies is reported on
stderr and the server stops the others and exits 1, so that a supervisor (systemd, a container runtime)
restarts it whole: restarting the one process would hide a crash that repeats. Each process dies with
the server (PR_SET_PDEATHSIG on Linux): even a killed server leaves no orphans. A worker holds SIGINT
and SIGTERM back until its handlers are ready and again as it ends, so that the server stopping it at
any moment ends it quietly.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from ..config import ServeConfig
from ..errors import CharnnError
from ..runtime.signals import Terminated
from ..runtime.threads import ThreadChoice, resolve_threads
from .tally import Tally

BACKLOG = 2048
STOP_MARGIN = 10.0  # seconds a worker has to exit after its grace period (uvicorn's own margin is 5)
SPREADS_CONNECTIONS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")
PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)  # held back while a worker starts and ends


def worker_count(config: ServeConfig, threads: ThreadChoice) -> int:
    """The workers `config.workers` asks for; "auto": one per core's worth of a worker's threads."""
    if str(config.workers).strip().lower() != "auto":
        return int(config.workers)
    return max(1, min(threads.cores // (threads.fixed or 1), config.max_concurrent))


def listen(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening socket (port 0: any free port); a clear error when the address cannot be had."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family, backlog=BACKLOG, reuse_port=reuse_port)
    except (OSError, socket.gaierror) as err:
        reason = err.strerror if isinstance(err, socket.gaierror) or not err.errno else os.strerror(err.errno)
        raise CharnnError(f"cannot listen on {host}:{port} ({reason})") from None


def listen_all(host: str, port: int, count: int) -> list[socket.socket]:
    """A listening socket for each of `count` workers: their own, bound with SO_REUSEPORT where the
    kernel spreads connections among such sockets; else one socket, the same for all."""
    alone = listen(host, port)  # refused if anyone holds the port, even a server that set SO_REUSEPORT
    if count == 1 or not SPREADS_CONNECTIONS:
        return [alone] * count
    port = alone.getsockname()[1]
    alone.close()
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sockets.append(listen(host, port, reuse_port=True))
    except CharnnError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def url_of(sock: socket.socket) -> str:
    bound = sock.getsockname()
    host = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    return f"http://{host}:{bound[1]}"


def serve_workers(sources: list[str | None], config: ServeConfig,
                  on_ready: Callable[[dict, str, int], None] | None = None) -> None:
    """Serve `sources` on `config`'s address in `config.workers` processes (this one alone for one)
    until SIGTERM or Ctrl-C; `on_ready(shapes, url, workers)` once every worker listens."""
    threads = resolve_threads(config.threads)
    count = worker_count(config, threads)
    sockets = listen_all(config.host, config.port, count)
    url = url_of(sockets[0])
    ready = None if on_ready is None else (lambda shapes: on_ready(shapes, url, count))
    if count == 1:
        from .server import serve_on  # noqa: PLC0415 (FastAPI and uvicorn)

        serve_on(sources, config, sockets[0], ready, threads=threads)
        return
    Workers(sources, config, sockets, threads).run(ready)


@dataclass
class Shared:
    """What every process of the server is forked with: the workers' listening sockets, the tally, and a
    pipe between each worker and each engine (`links[worker][engine]`: the engine's end, the worker's).
    Each process closes what is not its own (`keep`): an end left open elsewhere would hide a process's
    exit from the other."""

    sockets: list[socket.socket]
    tally: Tally
    links: list[list[tuple]] = field(default_factory=list)

    @property
    def engine_rows(self) -> list[int]:
        """The engines' rows of the tally, after the workers'."""
        engines = len(self.links[0]) if self.links else 0
        return list(range(len(self.sockets), len(self.sockets) + engines))

    def keep(self, own: list) -> None:
        ends = [end for row in self.links for link in row for end in link]
        for thing in {id(thing): thing for thing in [*self.sockets, *ends]}.values():
            if not any(thing is mine for mine in own):
                thing.close()


class Workers:
    """The processes of one server, started here, and watched until they stop: the HTTP workers, then as
    many engines, which sample for all of them (`charnn.serve.engines`)."""

    def __init__(self, sources: list[str | None], config: ServeConfig, sockets: list[socket.socket],
                 threads: ThreadChoice):
        self.sources, self.config, self.threads = sources, config, threads
        self.context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        self.shared = Shared(sockets, Tally(len(sockets), self.context, rows=2 * len(sockets)))
        self.processes: list = []
        self.pipes: list = []

    @property
    def tally(self) -> Tally:
        return self.shared.tally

    def _start(self) -> None:
        """The workers and the engines, forked with SIGINT and SIGTERM blocked: a signal (another worker's
        error stops the server) that reached a worker before its handlers were ready would end it with a
        traceback."""
        count = len(self.shared.sockets)
        self.shared.links = [[self.context.Pipe() for _ in range(count)] for _ in range(count)]
        http = ThreadChoice(1, self.threads.source, self.threads.cores)  # the engines compute: no BLAS here
        with signals_blocked():
            for index in range(count):
                self._fork(work, f"charnn-serve-{index}", index, self.sources, self.config, http)
            for index in range(count, 2 * count):
                self._fork(host_engine, f"charnn-serve-engine-{index - count}", index, self.sources, self.config,
                           self.threads)

    def _fork(self, target: Callable, name: str, index: int, *args) -> None:
        receive, send = self.context.Pipe(duplex=False)
        process = self.context.Process(target=target, name=name, args=(index, *args, self.shared, send, os.getpid()))
        process.start()
        send.close()
        self.processes.append(process)
        self.pipes.append(receive)

    def name(self, index: int) -> str:
        count = len(self.shared.sockets)
        return f"engine {index - count}" if index >= count else f"worker {index}"

    def run(self, on_ready: Callable[[dict], None] | None) -> None:
        """Until a signal (then the workers stop, and it is raised again) or a worker's death (CharnnError)."""
        try:
            self._start()
            shapes = self._wait_until_ready()
            self.shared.keep([])  # the processes hold them now: the port closes when the workers close theirs
            if on_ready is not None:
                on_ready(shapes)
            self._watch()
        finally:
            self.stop()

    def _wait_until_ready(self) -> dict:
        """The models' shapes, once every worker has loaded them and listens; a worker's CharnnError
        (the models, the chat template) is raised here, once."""
        unready, pipes, shapes = set(range(len(self.pipes))), dict(zip(self.pipes, range(len(self.pipes)))), {}
        sentinels = {process.sentinel: index for index, process in enumerate(self.processes)}
        while unready:
            for ready in multiprocessing.connection.wait([*pipes, *sentinels]):  # pipes first: an error's message
                if ready in sentinels:
                    index = sentinels[ready]
                    if self.pipes[index] in pipes and has_message(self.pipes[index]):
                        continue  # its message is read next time round
                    self.processes[index].join(5)  # its exit code
                    raise CharnnError(f"{self.name(index)} {ended(self.processes[index])} before the server was ready")
                if ready not in pipes:
                    continue
                index = pipes.pop(ready)  # one message from each: "ready" or "error"
                try:
                    message = ready.recv()
                except EOFError:
                    continue  # its process ended without a word: its sentinel says how
                if message[0] == "error":
                    raise CharnnError(message[1], hint=message[2])
                shapes = shapes or message[1]
                unready.discard(index)
        return shapes

    def _watch(self) -> None:
        """Returns never: raises when a worker ends without being asked to (or a signal arrives)."""
        sentinels = {process.sentinel: index for index, process in enumerate(self.processes)}
        done = multiprocessing.connection.wait(list(sentinels))
        index = sentinels[done[0]]
        self.processes[index].join(5)  # its exit code
        self.tally.clear(index)  # its slots and connections are gone with it
        note = f"{self.name(index)} (pid {self.processes[index].pid}) {ended(self.processes[index])}"
        print(f"charnn: serve: {note}; stopping the others", file=sys.stderr, flush=True)
        raise CharnnError(f"the server stopped: {note}")

    def stop(self) -> None:
        """SIGTERM to every worker still running, once; after their grace period and a margin, or at a
        second Ctrl-C or SIGTERM, the ones left are killed. The engines end as the workers' pipes close."""
        self.shared.keep([])  # this process's ends of the pipes too (held until the others were ready)
        for process in self.processes:
            if process.exitcode is None:
                try:
                    os.kill(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        try:
            deadline = time.monotonic() + self.config.grace_seconds + STOP_MARGIN
            for process in self.processes:
                process.join(max(0.0, deadline - time.monotonic()))
        finally:
            for process in self.processes:
                if process.exitcode is None:
                    process.kill()
                    process.join(5)
            for pipe in self.pipes:
                pipe.close()


def has_message(pipe) -> bool:
    """Whether a worker that ended left a message (its error) to read first."""
    try:
        return pipe.poll()
    except (OSError, EOFError):
        return False


def ended(process) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def work(index: int, sources: list[str | None], config: ServeConfig, threads: ThreadChoice, shared: Shared,
         pipe, parent: int) -> None:
    """A worker process: one server on `shared.sockets[index]`, its counts in row `index` of the tally,
    its requests sampled by the engines through `shared.links[index]`."""
    sock, ends = shared.sockets[index], [end for _, end in shared.links[index]]
    shared.keep([sock, *ends])  # forked, it holds the others' too: open here, they would queue connections for good
    shared.tally.row = index
    try:
        try:
            unblock_signals()  # blocked since the fork: one that came meanwhile is raised here, and caught
            die_with(parent)
            from .engines import Router  # noqa: PLC0415
            from .server import serve_on  # noqa: PLC0415

            router = Router(ends, shared.tally, shared.engine_rows)
            serve_on(sources, config, sock, lambda shapes: pipe.send(("ready", shapes)), shared.tally, threads, router)
        except CharnnError as err:
            block_signals()  # the server stops every worker at this message: its SIGTERM must not break the exit
            pipe.send(("error", err.message, err.hint))
            sys.exit(1)
    except (KeyboardInterrupt, Terminated, BrokenPipeError):
        pass  # how a signal comes back once uvicorn has stopped, or while an error is being sent (another
        # worker's error stops the server): the server asked for it, and has its message already
    finally:
        block_signals()  # ending anyway: a signal now would interrupt multiprocessing's exit with a traceback


def host_engine(index: int, sources: list[str | None], config: ServeConfig, threads: ThreadChoice, shared: Shared,
                pipe, parent: int) -> None:
    """An engine process: the requests the workers route to it, sampled in one batch per model, until
    every worker has closed its pipe. SIGINT and SIGTERM stay blocked: they are for the workers, which
    need the engines while they finish their streams."""
    engine = index - len(shared.sockets)
    ends = [row[engine][0] for row in shared.links]
    shared.keep(ends)
    shared.tally.row = index
    die_with(parent, signal.SIGKILL)
    from .connections import map_large_blocks  # noqa: PLC0415
    from .engines import EngineHost  # noqa: PLC0415
    from .server import open_batchers  # noqa: PLC0415

    try:
        batchers = open_batchers(sources, threads)
    except CharnnError as err:
        pipe.send(("error", err.message, err.hint))
        sys.exit(1)
    pipe.send(("ready", {name: batcher.engine.config for name, batcher in batchers.items()}))
    cores = None if threads.fixed is not None else threads.cores  # fixed: each engine keeps its count
    map_large_blocks()  # a storm's batch goes back to the system when it ends, as in a worker
    EngineHost(batchers, ends, shared.tally, shared.engine_rows, cores).serve()


@contextmanager
def signals_blocked():
    """SIGINT and SIGTERM held back from this thread (and from processes it forks) meanwhile."""
    block_signals()
    try:
        yield
    finally:
        unblock_signals()


def block_signals() -> None:
    if hasattr(signal, "pthread_sigmask"):  # not on Windows
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_signals() -> None:
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def die_with(parent: int, signum: int = signal.SIGTERM) -> None:
    """`signum` to this process when its parent dies (Linux), so that a server killed outright leaves no
    workers behind; a parent already gone ends it now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signum)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signum)
