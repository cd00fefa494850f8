"""`charnn serve --workers N`: several processes serving one port, each a whole server.

One process stops at about one core: its batcher thread and its event loop share one GIL. So the
server can run as several worker processes, each with its own models (loaded once per process), its
own `Batcher` and event loop, and its own Host and Origin checks, deadlines and buffers
(`charnn.serve.server.serve_on`). What they share is the port and a `Tally` of the limits:
`--max-concurrent` and `--max-connections` hold for the server as a whole, whichever worker a client
reached, and /health counts every worker's requests. A request is answered by one worker alone, and its
text depends only on its seed, so the same seed gives the same text whichever worker answers.

The port. On Linux every worker gets its own listening socket, all bound to the address with
SO_REUSEPORT, and the kernel spreads new connections evenly among them. One socket shared by all would
work as well, but asyncio accepts every connection waiting each time its socket wakes it, so a burst
of 32 clients could all land in one worker and stay there (keep-alive). The parent binds every socket
before a worker starts, so port 0 picks one port for all and a port in use is one clear error; it first
binds the address alone without SO_REUSEPORT, so a second server on the same port is refused rather
than let in beside the first. Elsewhere (where SO_REUSEPORT does not spread connections, or is missing)
the workers share one socket.

The default (`--workers auto`): one worker per core's worth of threads, each worker's thread policy
choosing among the cores that are its share: on N cores, N workers of one BLAS thread each, unless
--threads (or CHARNN_THREADS or OMP_NUM_THREADS) fixes T threads a worker, which gives N // T
workers; never more workers than --max-concurrent. Processes beat threads here: a worker's step never
waits at a barrier for a partner thread, which is what made two threads slower than one beside a busy
neighbour (`charnn.runtime.threads`). `--workers 1` is a server of one process, as before workers.

The life of the workers. They start by fork on Linux (quick: nothing is loaded yet) and spawn
elsewhere; each loads the models and says so over a pipe, and the server says it is ready once every
worker has. SIGTERM or Ctrl-C: each worker is sent SIGTERM once (uvicorn takes a second SIGINT as
"stop at once"), has --grace-seconds for its streams and a few seconds more to exit, then is killed;
the server ends as the signal says (143 or 130). A second Ctrl-C kills them at once. A worker that
dies is reported on stderr and the server stops the others and exits 1, so that a supervisor (systemd,
a container runtime) restarts it whole: restarting the one worker would hide a crash that repeats.
Each worker dies with the server (PR_SET_PDEATHSIG on Linux): even a killed server leaves no orphans.
A worker holds SIGINT and SIGTERM back until its handlers are ready and again as it ends, so that the
server stopping it at any moment ends it quietly.
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


def worker_threads(threads: ThreadChoice, workers: int) -> ThreadChoice:
    """A worker's thread choice: a fixed count as given; the policy's, among its share of the cores."""
    if workers == 1 or threads.fixed is not None:
        return threads
    return ThreadChoice(None, threads.source, max(1, threads.cores // workers))


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
    Workers(sources, config, sockets, worker_threads(threads, count)).run(ready)


class Workers:
    """The worker processes of one server, started here, and watched until they stop."""

    def __init__(self, sources: list[str | None], config: ServeConfig, sockets: list[socket.socket],
                 threads: ThreadChoice):
        self.sources, self.config, self.sockets, self.threads = sources, config, sockets, threads
        self.context = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
        self.tally = Tally(len(sockets), self.context)
        self.processes: list = []
        self.pipes: list = []

    def _start(self) -> None:
        """The workers, forked with SIGINT and SIGTERM blocked: a signal (another worker's error stops the
        server) that reached a worker before its handlers were ready would end it with a traceback."""
        with signals_blocked():
            for index in range(len(self.sockets)):
                receive, send = self.context.Pipe(duplex=False)
                process = self.context.Process(target=work, name=f"charnn-serve-{index}", args=(
                    index, self.sources, self.config, self.sockets, self.threads, self.tally, send, os.getpid()))
                process.start()
                send.close()
                self.processes.append(process)
                self.pipes.append(receive)

    def run(self, on_ready: Callable[[dict], None] | None) -> None:
        """Until a signal (then the workers stop, and it is raised again) or a worker's death (CharnnError)."""
        try:
            self._start()
            shapes = self._wait_until_ready()
            for sock in set(self.sockets):  # the workers hold them now: the port closes when they close theirs
                sock.close()
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
                    raise CharnnError(f"worker {index} {ended(self.processes[index])} before the server was ready")
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
        note = f"worker {index} (pid {self.processes[index].pid}) {ended(self.processes[index])}"
        print(f"charnn: serve: {note}; stopping the others", file=sys.stderr, flush=True)
        raise CharnnError(f"the server stopped: {note}")

    def stop(self) -> None:
        """SIGTERM to every worker still running, once; after their grace period and a margin, or at a
        second Ctrl-C or SIGTERM, the ones left are killed."""
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


def work(index: int, sources: list[str | None], config: ServeConfig, sockets: list[socket.socket],
         threads: ThreadChoice, tally: Tally, pipe, parent: int) -> None:
    """A worker process: one server on `sockets[index]`, its counts in row `index` of the tally."""
    sock = sockets[index]
    for other in sockets:  # forked, it holds the others' too: open here, they would queue connections for good
        if other is not sock:
            other.close()
    tally.row = index
    try:
        try:
            unblock_signals()  # blocked since the fork: one that came meanwhile is raised here, and caught
            die_with(parent)
            from .server import serve_on  # noqa: PLC0415

            serve_on(sources, config, sock, lambda shapes: pipe.send(("ready", shapes)), tally, threads)
        except CharnnError as err:
            block_signals()  # the server stops every worker at this message: its SIGTERM must not break the exit
            pipe.send(("error", err.message, err.hint))
            sys.exit(1)
    except (KeyboardInterrupt, Terminated, BrokenPipeError):
        pass  # how a signal comes back once uvicorn has stopped, or while an error is being sent (another
        # worker's error stops the server): the server asked for it, and has its message already
    finally:
        block_signals()  # ending anyway: a signal now would interrupt multiprocessing's exit with a traceback


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


def die_with(parent: int) -> None:
    """SIGTERM this process when its parent dies (Linux), so that a server killed outright leaves no
    workers behind; a parent already gone ends it now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)
