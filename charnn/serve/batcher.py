"""Many requests sampled as one batch: the core of `charnn serve`, without a web framework.

A `Batcher` owns one model's engine and one worker thread. Every step of the thread advances every
request in flight at once, one multi-stream step of a single `Streams` batch (each of a request's
`n` choices is a stream). A new request first reads its prompt, a slice per step so that a long
prompt never stalls the others (while a batch steps, the last character is left for its step to
read), then joins the batch, whose step hands its first character out at once; while no request
arrives, joins or ends, the batch takes up to `CHUNK` steps between hand-outs. A request that
finished, or whose client went away, leaves at once and frees its columns. A request whose client has
not taken its last `MAX_BACKLOG` hand-outs of text is set aside (its streams kept, nothing drawn)
until the client catches up: a client that stops reading costs memory for a few steps, never for its
answer.

Each request's streams draw from generators seeded by the request (`stream_rng(seed, i)`, as
`charnn sample --seed`), so its text does not depend on its batch-mates, up to floating-point
rounding in the batched matrix products. The worker hands text out through a callback, which
`charnn.serve.relay` adapts to asyncio for the server.
"""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..data.vocab import Vocab
from ..errors import CharnnError
from ..generate.settings import SamplingConfig
from ..generate.stops import ChoiceText
from ..generate.streams import Streams, alike, default_prime, feed_each
from ..model.engine import Engine

PROMPT_SLICE = 256  # prompt characters joining requests read per step: the others wait at most this long
# The worker hands the GIL to the event loop at least this often (seconds). Python's own switch interval
# is 5 ms, which a waiting event loop adds to every request's first character; handing over after every
# step instead costs the loop a wake-up, and the clients a chunk, per character.
HAND_OVER = 0.002
MAX_BACKLOG = 32  # hand-outs of text not yet taken by the client, before its request pauses
# Steps a batch takes between hand-outs while no request arrives, joins or ends. What a step costs beside
# the model's (the thread policy's turn, the cancelled and paused looked at, the text handed out, the
# engine's pipes flushed, a streaming client's worker woken) is then paid once a chunk: 8 clients of 200
# characters were served at 0.89 of offline's speed by a batcher alone (no HTTP), 0.94 with chunks
CHUNK = 8


@dataclass(frozen=True)
class CompletionRequest:
    """One request, checked: what to continue, how, and how much."""

    prompt: str = ""  # empty: the model's default start (after a newline)
    max_tokens: int = 256  # characters per choice (bytes with a byte-level model)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()  # a choice ends where it produces one of these (not included)
    n: int = 1
    seed: int | None = None  # None: a fresh one; choice i draws with stream_rng(seed, i)


def prompt_ids(vocab: Vocab, config, prompt: str) -> np.ndarray:
    """The prompt as ids (the model's default start when empty); CharnnError names unknown characters."""
    if not prompt:
        return np.asarray(default_prime(vocab, config.reset_ids), dtype=np.int64)
    return np.asarray(vocab.encode(prompt), dtype=np.int64)


@dataclass
class Piece:
    """New text of one choice, and why it ended (None while it goes on)."""

    index: int
    text: str
    finish_reason: str | None = None  # "length" or "stop"


class Job:
    """A request in flight: its streams until it joins the batch, its choices, and where text goes."""

    def __init__(self, request: CompletionRequest, prompt_ids: np.ndarray, engine: Engine, vocab: Vocab,
                 deliver: Callable[[list[Piece] | BaseException], None], paced: bool = False, whole: bool = False):
        options, rngs = alike(request.sampling, request.n, request.seed, engine.vocab_size)
        # one stream reads the prompt; it fans out to the n choices as it joins the batch
        self.streams = Streams(engine, options.select(np.zeros(1, dtype=np.int64)), rngs[:1])
        self.fan = (options, rngs) if request.n > 1 else None
        self.unread = prompt_ids  # the prompt not yet read
        self.choices = [ChoiceText(vocab, request.max_tokens, request.stop) for _ in range(request.n)]
        self.deliver = deliver
        self.cancelled = False
        self.paced = paced  # whether its reader counts what it takes: only then can it fall behind
        # the whole text in one hand-over when it is done (an answer that is not streamed): one wake-up of
        # the event loop a request, not one a character
        self.kept: list[list[str]] | None = [[] for _ in self.choices] if whole else None
        self.delivered = 0  # hand-outs of text (the worker counts)
        self.taken = 0  # of those, taken by the client (its reader counts)

    @property
    def behind(self) -> bool:
        return self.paced and self.delivered - self.taken > MAX_BACKLOG

    @property
    def caught_up(self) -> bool:
        return self.delivered - self.taken <= MAX_BACKLOG // 2

    @property
    def finished(self) -> bool:
        return all(choice.finish_reason for choice in self.choices)


class Batcher:
    """One model's requests, stepped together by one worker thread (numpy's BLAS releases the GIL)."""

    def __init__(self, engine: Engine, vocab: Vocab, name: str = "model", records: dict | None = None):
        self.engine, self.vocab, self.name = engine, vocab, name
        self.records = records or {}  # what the model's file says of its training: step, val_loss
        self.after_step: Callable[[], None] | None = None  # called by the worker after each step's hand-out
        self.hand_over: float | None = HAND_OVER  # None: no event loop shares this process's GIL
        # the threads a step must keep to while other processes step beside this one (None: the policy's)
        self.sharing: Callable[[], int | None] | None = None
        self._wake = threading.Condition()
        self._arrivals: list[Job] = []
        self._reading: list[Job] = []
        self._rows: list[tuple[Job, int]] = []  # the batch's streams: (job, choice index), in order
        self._paused: list[Job] = []  # out of the batch until their clients read (`Job.streams` holds them)
        self._batch: Streams | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"charnn-serve-{name}", daemon=True)

    # --- the other threads' side ---------------------------------------------------------------

    def start(self) -> Batcher:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Cancel whatever is in flight and end the worker."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def prompt_ids(self, prompt: str) -> np.ndarray:
        return prompt_ids(self.vocab, self.engine.config, prompt)

    def submit(self, request: CompletionRequest, deliver: Callable[[list[Piece] | BaseException], None],
               paced: bool = False, whole: bool = False, before: Callable[[Job], None] | None = None) -> Job:
        """Start a request; `deliver` is called from the worker thread with each hand-out's new text (a list
        of `Piece`, the last one of each choice with its finish reason), or an exception if it failed.
        `paced`: the caller adds to `job.taken` what its client takes (and calls `wake`), and the job
        pauses while more than MAX_BACKLOG hand-outs wait for its client. `whole`: `deliver` is called once,
        with every choice's whole text, when the last one finishes. `before(job)` is called before the
        job is queued."""
        job = Job(request, self.prompt_ids(request.prompt), self.engine, self.vocab, deliver, paced, whole)
        if before is not None:  # before the worker can deliver anything for it
            before(job)
        with self._wake:
            if self._stopping:
                raise CharnnError("the server is shutting down")
            self._arrivals.append(job)
            self._wake.notify()
        return job

    def cancel(self, job: Job) -> None:
        """The client went away: the job leaves the batch at the next step."""
        job.cancelled = True
        self.wake()

    def wake(self) -> None:
        """Look again at the paused requests (a client read, or left)."""
        with self._wake:
            self._wake.notify()

    def load(self) -> dict:
        """Requests and streams in flight, and the requests paused for their clients (a snapshot, for /health)."""
        with self._wake:
            waiting = self._reading + self._arrivals + self._paused
            jobs = {id(job) for job, _ in self._rows} | {id(job) for job in waiting}
            others = sum(len(job.choices) for job in self._reading + self._arrivals) + sum(
                len(job.streams) for job in self._paused)
            return {"requests": len(jobs), "streams": len(self._rows) + others, "paused": len(self._paused)}

    # --- the worker ----------------------------------------------------------------------------

    def _run(self) -> None:
        handed_over = time.perf_counter()
        self.engine.pool.working()
        with self.engine.pool:  # BLAS's threads follow the engine's policies for the life of the server
            while self._wait_for_work():
                try:
                    self._timed_step()
                except Exception as err:  # a bug: fail what is in flight rather than hang its clients
                    self._fail_all(err)
                if self.after_step is not None:
                    self.after_step()
                if self.hand_over is not None and time.perf_counter() - handed_over > self.hand_over:
                    time.sleep(0)  # releases the GIL: a thread waiting for it takes it now
                    handed_over = time.perf_counter()

    def _wait_for_work(self) -> bool:
        with self._wake:
            if not self._work():
                self.engine.pool.resting()  # nothing to step: BLAS's threads need not spin meanwhile
                while not self._work():
                    self._wake.wait()
                self.engine.pool.working()
            if self._stopping:
                self.engine.pool.resting()
                for job in self._arrivals + self._reading + self._paused + [job for job, _ in self._rows]:
                    job.deliver(CharnnError("the server shut down"))
                return False
            self._reading += self._arrivals
            self._arrivals = []
            return True

    def _work(self) -> bool:
        return bool(self._arrivals or self._reading or self._rows or self._stopping
                    or any(job.cancelled or job.caught_up for job in self._paused))

    def _timed_step(self) -> None:
        """A step at the thread count the policy for a batch this wide says; timed for it when it only
        samples (a step that also reads prompts is not comparable)."""
        shared = self.sharing() if self.sharing is not None else None
        if self.sharing is not None:
            self.engine.pool.limit(shared)  # reading the prompts too
        if shared is not None:  # the cores are shared out: no timing decides anything
            self.engine.pool.set(shared)
            self._step()
            return
        reading = bool(self._reading)
        policy = self.engine.policy_for(len(self._rows) + sum(len(job.choices) for job in self._reading))
        policy.start()
        started = time.perf_counter()
        drawn = self._step()
        if not reading and drawn:
            policy.finish(time.perf_counter() - started, drawn)

    def _step(self) -> int:
        """Drop the cancelled, read a slice of each new prompt, join the ready, advance every stream (a
        chunk of steps when nothing joined: see `_chunk`); returns the characters drawn."""
        self._reading = [job for job in self._reading if not job.cancelled]
        self._keep([row for row, (job, _) in enumerate(self._rows) if not job.cancelled])
        self._resume()
        ready = self._read_prompts()
        if ready:
            with self._wake:
                self._reading = [job for job in self._reading if job not in ready]
            for job in ready:
                self._join(job)
        if self._batch is None:
            return 0
        steps = 1 if ready or self._reading else self._chunk()
        ids = [self._batch.advance()]
        while len(ids) < steps and not self._arrivals:  # an arrival ends the chunk: its prompt waits a step
            ids.append(self._batch.advance())
        drawn = len(self._rows) * len(ids)
        self._hand_out(np.stack(ids, axis=1).tolist())
        return drawn

    def _chunk(self) -> int:
        """Steps until the next hand-out: CHUNK, or fewer if a choice reaches its length sooner (it then
        leaves the batch at once); a choice that stops at a stop string hands its text out at the chunk's end."""
        return min(CHUNK, *(job.choices[index].left for job, index in self._rows))

    def _read_prompts(self) -> list[Job]:
        """The new requests read the next stretch of their prompts, all as one batch (as long as the
        shortest of them, so a short prompt never waits for a long one); those ready to join are returned.
        While a batch steps, a prompt's last character is left for its step to read (a one-character
        prompt, as an empty one's default start, then costs no model pass of its own: at 8 clients of 200
        characters the steps with such passes took 8% of the time); a request alone reads it all (its
        first character otherwise came 1.4 ms later, from an idle machine)."""
        if not self._reading:
            return []
        last = 1 if self._batch is not None else 0
        longer = [job for job in self._reading if len(job.unread) > last]
        if longer:
            length = min(PROMPT_SLICE, *(len(job.unread) - last for job in longer))
            feed_each([job.streams for job in longer], [job.unread[:length] for job in longer])
            for job in longer:
                job.unread = job.unread[length:]
        ready = [job for job in self._reading if len(job.unread) == last]
        for job in ready:
            if last:
                job.streams.feed_but_last(job.unread)
            job.unread = job.unread[last:]
        return ready

    def _join(self, job: Job) -> None:
        if job.fan is not None:
            job.streams.fan_out(*job.fan)
            job.fan = None
        if self._batch is None:
            self._batch = job.streams
        else:
            self._batch.join(job.streams)
        job.streams = None  # its columns now live in the batch
        with self._wake:  # the unfinished choices, in order (a paused job's finished ones left before)
            self._rows += [(job, index) for index, choice in enumerate(job.choices) if not choice.finish_reason]

    def _resume(self) -> None:
        """Paused jobs whose clients caught up join the batch again; those whose clients left are dropped."""
        with self._wake:
            back = [job for job in self._paused if job.caught_up and not job.cancelled]
            self._paused = [job for job in self._paused if not (job.cancelled or job.caught_up)]
        for job in back:
            self._join(job)

    def _pause_behind(self, rows: list[int]) -> list[int]:
        """Of the rows to keep, set aside those of jobs whose clients are behind (each job's streams
        copied out of the batch, in order); the rest are returned."""
        behind = {id(job): job for job, _ in (self._rows[row] for row in rows) if job.behind}
        for job in behind.values():
            part = copy.copy(self._batch)  # `keep` replaces what it selects, so the copy shares nothing it changes
            part.keep(np.asarray([row for row in rows if self._rows[row][0] is job], dtype=np.int64))
            job.streams = part
        with self._wake:
            self._paused += behind.values()
        return [row for row in rows if id(self._rows[row][0]) not in behind]

    def _hand_out(self, ids: list[list[int]]) -> None:
        """Each stream's new characters (a row of `ids` each) to its choice; each job's new text to its
        client; the finished leave."""
        pieces: dict[int, tuple[Job, list[Piece]]] = {}
        keep, done = [], []
        for row, ((job, index), tokens) in enumerate(zip(self._rows, ids)):
            choice = job.choices[index]
            text = choice.extend(tokens)
            if job.kept is not None:  # kept until the job is done (no Piece a step: they cost at 64 streams)
                job.kept[index].append(text)
                if choice.finish_reason and job.finished:
                    done.append((job, [Piece(number, "".join(texts), kind.finish_reason)
                                       for number, (texts, kind) in enumerate(zip(job.kept, job.choices))]))
            elif text or choice.finish_reason:
                pieces.setdefault(id(job), (job, []))[1].append(Piece(index, text, choice.finish_reason))
            if not choice.finish_reason:
                keep.append(row)
        for job, job_pieces in [*pieces.values(), *done]:
            job.delivered += 1
            job.deliver(job_pieces)
        self._keep(self._pause_behind(keep))

    def _keep(self, rows: list[int]) -> None:
        if len(rows) == len(self._rows):
            return
        with self._wake:
            self._rows = [self._rows[row] for row in rows]
        if not rows:
            self._batch = None
        elif self._batch is not None:
            self._batch.keep(np.asarray(rows, dtype=np.int64))

    def _fail_all(self, err: Exception) -> None:
        with self._wake:
            jobs = {id(job): job for job in self._reading + self._paused + [job for job, _ in self._rows]}
            self._reading, self._paused, self._rows, self._batch = [], [], [], None
        for job in jobs.values():
            job.deliver(err)
