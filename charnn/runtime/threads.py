"""How many threads charnn computes with: the one owner of that choice, for training, evaluation and the
numpy engine's BLAS alike.

Nobody computes on an idle machine. On our 2-core CI machine the default training step ran at 18,900
characters a second on two threads and 11,800 on one when idle, but beside a process spinning one core
two threads fell to 7,700 (a thread that waits for its partner at every barrier spins while the partner
waits for a core). So a `ThreadPolicy` times the work itself at each candidate count and keeps the
fastest. `--threads N`, else `CHARNN_THREADS`, else a user's own `OMP_NUM_THREADS` fixes the count;
`--threads auto` asks for the policy whatever the environment says. PyTorch's reductions round
differently on different thread counts, so two runs are bit-identical only with a fixed count.

Torch-free: the caller hands in the function that applies a count (`torch.set_num_threads`, or the
BLAS pool's), so `charnn sample` uses the same policy without PyTorch.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ..errors import CharnnError
from .contention import crowded, viable

ENV_VAR = "CHARNN_THREADS"
SOURCES = ("--threads", ENV_VAR, "OMP_NUM_THREADS")


def available_cores() -> int:
    """The cores this process may run on (its affinity mask, which taskset and cpusets narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def parse_threads(value, source: str, cores: int | None = None) -> int | None:
    """A thread count as given on the command line or in the environment: a whole number from 1 to the
    cores available, or 'auto' (None: charnn's policy)."""
    cores = cores or available_cores()
    text = str(value).strip().lower()
    if text == "auto":
        return None
    if not text.isdigit() or not 1 <= int(text) <= cores:
        raise CharnnError(f"{source} must be auto or a whole number from 1 to {cores} (the cores available "
                          f"here), not {value!r}")
    return int(text)


@dataclass(frozen=True)
class ThreadChoice:
    """Who decides the thread count: a fixed number and where it came from, or charnn's policy among
    `candidates`."""

    fixed: int | None
    source: str  # "--threads", "CHARNN_THREADS", "OMP_NUM_THREADS" or "auto"
    cores: int

    @property
    def candidates(self) -> tuple[int, ...]:
        """The counts the policy tries: powers of two up to the cores, and the cores themselves."""
        if self.fixed is not None:
            return (self.fixed,)
        counts = {self.cores}
        n = 1
        while n < self.cores:
            counts.add(n)
            n *= 2
        return tuple(sorted(counts))

    def describe(self) -> str:
        if self.fixed is not None:
            return f"{_threads(self.fixed)} ({self.source})"
        return f"chosen by timing among {', '.join(map(str, self.candidates))}"


def resolve_threads(option: str | int | None = None, environ: Mapping[str, str] | None = None,
                    cores: int | None = None) -> ThreadChoice:
    """The thread choice for a command: `option` (--threads, None if not given), then CHARNN_THREADS, then
    OMP_NUM_THREADS; with none of them, or 'auto' where it came first, charnn's policy."""
    environ = os.environ if environ is None else environ
    cores = cores or available_cores()
    for source, value in zip(SOURCES, (option, environ.get(ENV_VAR), environ.get("OMP_NUM_THREADS"))):
        if value is None or (source != "--threads" and not str(value).strip()):
            continue
        if source == "OMP_NUM_THREADS":
            outer = str(value).split(",")[0].strip()  # OpenMP's nested form "4,2": the outer level is ours
            if outer.isdigit() and int(outer) >= 1:
                return ThreadChoice(int(outer), source, cores)
            continue  # not a count: OpenMP's business, and it says so itself
        fixed = parse_threads(value, source, cores)
        return ThreadChoice(fixed, source if fixed is not None else "auto", cores)
    return ThreadChoice(None, "auto", cores)


def _threads(n: int) -> str:
    return f"{n} thread{'s' * (n != 1)}"


@dataclass(frozen=True)
class ThreadChange:
    """What a measurement decided: the count before and after, why, and the speeds it measured (work
    per second at each count: characters a second for the callers here)."""

    before: int
    after: int
    reason: str  # "start", "the speed moved" or "re-check"
    rates: dict[int, float] = field(default_factory=dict)

    def describe(self) -> str:
        speeds = ", ".join(f"{_threads(n)} {rate:,.0f}/s" for n, rate in sorted(self.rates.items()))
        if self.before == self.after:
            return f"{_threads(self.after)} ({self.reason}: {speeds})"
        return f"{self.before} -> {_threads(self.after)} ({self.reason}: {speeds})"

    def to_dict(self) -> dict:
        return {"threads": self.after, "before": self.before, "reason": self.reason,
                "rates": {str(n): round(rate, 1) for n, rate in sorted(self.rates.items())}}


class ThreadPolicy:
    """Chooses the thread count for a repeated unit of work (a training step, a window of evaluation, a
    sampling step) by timing the units themselves.

    Call `start()` before each unit (it applies the count the unit is to run at) and `finish(seconds,
    work)` after it. A probe runs `PROBE_ROUNDS` rounds (to `MAX_ROUNDS` while the two fastest counts are
    within `CLOSE`: the loser costs little, a wrong pick more); in each, every candidate has a turn of at least
    `PER_TURN` units and `TURN_SECONDS`, after one unmeasured unit the first time a count is used (it pays
    for starting the threads). It keeps the count with the least time per unit of work; after the start,
    the current count stays unless another is `MARGIN` faster. A count `GIVE_UP` times as slow as the best
    is dropped from the probe at once: a pathological count costs a unit or two, not a round.
    Between probes it watches the last units: two in a row `GIVE_UP` times as slow start a probe (after
    `MIN_GAP` seconds); a move of their mean by more than `DRIFT` either way starts one once `GAP` times
    the last probe's length (and `MIN_GAP`) have passed, so probes take 2% of the time at most; the clock
    starts one every `RECHECK` seconds too (doubling, to `MAX_RECHECK`, as re-checks confirm the count).
    """

    PROBE_ROUNDS = 2
    CLOSE, MAX_ROUNDS = 0.1, 6
    PER_TURN = 4
    TURN_SECONDS = 0.2
    MAX_PER_TURN = 4096  # 256 sampling steps lasted 22 ms: inside one of a bursty neighbour's spells
    CLEAR = 1.3  # a count this much slower ends its turn after DROP_SECONDS (full turns: 1% of a sample)
    WINDOW = 6  # units, at least, whose mean time per unit of work is compared with the reference
    WINDOW_SECONDS = 0.2  # and this long at least (MAX_WINDOW units at most): five of a bursty neighbour's periods
    MAX_WINDOW = 2048
    DRIFT = 0.25
    MARGIN = 0.05
    GIVE_UP = 2.0  # a count this many times slower than the best count ends its part of a probe,
    DROP_SECONDS = 0.05  # once its turn has taken this long (one unit of training does)
    GAP = 50.0  # a probe for a drifting speed waits this many times as long as the last probe took,
    MIN_GAP = 1.0  # and at least this many seconds: probes take 2% of the time at most
    RECHECK = 30.0  # seconds
    MAX_RECHECK = 240.0
    GROUP_SECONDS = 0.001  # shorter units are judged in groups: judging each 86 us sampling step cost 2-7%

    def __init__(self, choice: ThreadChoice, apply: Callable[[int], None], initial: int | None = None,
                 clock: Callable[[], float] = time.monotonic, trial: Callable[[int], float] | None = None,
                 watch: Callable[[], Callable[[], float | None]] | None = None):
        """`apply(n)` sets the pool to n threads; it is called before every unit, so it must be cheap when
        the pool already has n (torch.set_num_threads takes 0.1 microseconds). `trial(n)`, if given, times
        a small piece of parallel work at n threads (a millisecond on an idle machine): see `viable`.
        `watch()`, if given, starts watching the cores (charnn.runtime.contention.watch_cores): a start then
        runs its first turn at one thread before it tries the others, and leaves out those that the cores
        other processes kept busy meanwhile leave no room for (`crowded`: not even a trial of them)."""
        self.choice, self.apply, self.clock, self.trial, self.watch = choice, apply, clock, trial, watch
        self._deferred: list[int] = []  # a start's counts that wait for the end of its first turn
        self.adaptive = choice.fixed is None and len(choice.candidates) > 1
        self.threads = choice.fixed or initial or max(choice.candidates)
        self._used: set[int] = set()
        self._recent: list[float] = []
        self._slow_streak = 0.0  # seconds of the latest units in a row GIVE_UP times as slow as the reference
        self._window = self.WINDOW
        self._reference: float | None = None
        self._last_times: dict[int, float] = {}  # each count's time per unit of work, at the last probe
        self._interval = self.RECHECK
        self._next_check = 0.0
        self._last_probe, self._probe_started, self._probe_took = -float("inf"), 0.0, 0.0
        self._probe: _Probe | None = None
        self._hopeless: set[int] = set()  # counts the last probe that asked them found GIVE_UP times as slow
        self._asked: set[int] = set()
        self._reason = "start"
        self.changes: list[ThreadChange] = []
        self._starting = self.adaptive  # the first probe begins with the first unit (where `apply` works)
        self._held = [0.0, 0.0]  # seconds and work of the units not yet judged (under GROUP_SECONDS)

    @property
    def probing(self) -> bool:
        return self._probe is not None

    def start(self) -> int:
        """Apply the count the next unit runs at; returns it."""
        if self._starting:
            self._starting = False
            self._begin_probe("start")
        count = self._probe.count if self._probe is not None else self.threads
        self.apply(count)  # every time: another policy (evaluation's, say) may share the pool
        return count

    def finish(self, seconds: float, work: float = 1.0) -> ThreadChange | None:
        """Record a unit that took `seconds` for `work` (characters, say); a decision, if this unit
        completed a probe."""
        if not self.adaptive or seconds <= 0 or work <= 0:
            return None
        held = self._held
        if held[0] or seconds < self.GROUP_SECONDS:  # a group, judged as one unit once it lasts long enough
            held[0], held[1] = held[0] + seconds, held[1] + work
            if held[0] < self.GROUP_SECONDS:
                return None
            seconds, work, held[0], held[1] = held[0], held[1], 0.0, 0.0
        if self._probe is not None:
            self._used.add(self._probe.count)
            if self._probe.record(seconds, seconds / work):
                return None
            return self._decide()
        self._recent.append(seconds / work)
        slow = self._reference is not None and seconds / work > self.GIVE_UP * self._reference
        self._slow_streak = (self._slow_streak + seconds) if slow else 0.0
        if len(self._recent) > self._window:
            del self._recent[0]
        now = self.clock()
        moved = self._moved()
        since = now - self._last_probe
        if moved == "at once" and since >= self.MIN_GAP or moved and since >= max(self.GAP * self._probe_took,
                                                                                 self.MIN_GAP):
            self._begin_probe("the speed moved")
        elif now >= self._next_check:
            self._begin_probe("re-check")
        return None

    def _moved(self) -> str | None:
        """"at once" if the last two units (and DROP_SECONDS of them) are GIVE_UP times as slow as the reference and slower than
        another count was at the last probe (a neighbour that makes a unit take seconds is not waited for;
        a machine slower for every count is no reason to try the others again); "drift" if the mean of
        a window of units (WINDOW of them and WINDOW_SECONDS at least) moved by more than DRIFT either way,
        the window then starting afresh; else None. The mean, as the reference is, not the median: beside a
        neighbour busy 20 ms and asleep 20, two threads' sampling steps are quick or slow by turns, and
        the median of a window jumped between the two, which started probes the run did not need."""
        if self._reference is None or len(self._recent) < 2:
            return None
        latest = min(self._recent[-1], self._recent[-2])
        others = [t for count, t in self._last_times.items() if count != self.threads]
        # slow for DROP_SECONDS at least: a neighbour's 20 ms bursts slow a few millisecond units, not a run
        if latest > self.GIVE_UP * self._reference and others and latest > min(others) and (
                self._slow_streak >= self.DROP_SECONDS):
            return "at once"
        if len(self._recent) < self._window:
            return None
        ratio = statistics.fmean(self._recent) / self._reference
        self._recent.clear()
        return "drift" if ratio > 1 + self.DRIFT or ratio < 1 / (1 + self.DRIFT) else None

    def _begin_probe(self, reason: str) -> None:
        self._reason = reason
        self._probe_started = self.clock()
        # one thread first at the start: it never waits for a partner, so it is the safe yardstick
        first = min(self.choice.candidates) if reason == "start" else self.threads
        # a moving speed is asked about the counts that were not hopeless at the last probe: beside a
        # spinning core, two threads' one unit a probe cost one-stream sampling 8%; the clock's re-checks
        # (and a start) still ask every count, so a neighbour that leaves is noticed
        skip = self._hopeless if reason == "the speed moved" else set()
        order = [first] + [c for c in self.choice.candidates if c != first and c not in skip]
        if reason == "start" and self.watch is not None and len(order) > 1:
            order, self._deferred, self._watching = order[:1], order[1:], self.watch()
        else:
            order = viable(order, self.trial, self.GIVE_UP)
        self._asked = set(order)
        self._probe = _Probe(self, order)
        self._recent.clear()

    def _admit(self, first: int) -> list[int]:
        """The counts a start held back for its first turn (at `first`) that the cores' use during it
        leaves room for and that pass the trial."""
        deferred, self._deferred = self._deferred, []
        room = [n for n in deferred if n not in crowded(deferred, self.choice.cores, self._watching())]
        admitted = viable([first] + room, self.trial, self.GIVE_UP)[1:]
        self._asked |= set(admitted)
        return admitted

    def _decide(self) -> ThreadChange | None:
        probe, self._probe = self._probe, None
        times = {count: probe.per_work(count) for count in probe.seconds}
        best = min(times, key=times.get)
        asked = set(self.choice.candidates) if self._reason != "the speed moved" else self._asked
        self._hopeless = (self._hopeless - asked) | {  # left out by the trial, dropped mid-probe, or far slower
            count for count in asked if count not in probe.order or times.get(count, 0) > self.GIVE_UP * times[best]}
        # not clearly faster: stay, rather than follow noise. A start has no count to stay with: its
        # `initial` is a guess, and beside a half-busy core it held sampling on a count 6-13% slower
        if self._reason != "start" and self.threads in times and times[best] > times[self.threads] * (1 - self.MARGIN):
            best = self.threads
        before, self.threads = self.threads, best
        self._reference, self._last_times = times[best], times
        unit = statistics.median(probe.seconds[best])
        self._window = max(self.WINDOW, min(self.MAX_WINDOW, math.ceil(self.WINDOW_SECONDS / max(unit, 1e-6))))
        changed = best != before or self._reason == "start"
        self._last_probe = self.clock()
        self._probe_took = self._last_probe - self._probe_started
        if best != before or asked >= set(self.choice.candidates):  # a probe that left counts out confirms
            self._interval = self.RECHECK if best != before else min(self._interval * 2, self.MAX_RECHECK)
            self._next_check = self._last_probe + self._interval  # nothing about them: the clock keeps its date
        if not changed:
            return None
        change = ThreadChange(before, best, self._reason, {n: 1.0 / t for n, t in times.items()})
        self.changes.append(change)
        return change


class _Probe:
    """One probe of a ThreadPolicy: the candidates' turns, round after round, and what each unit took."""

    def __init__(self, policy: ThreadPolicy, order: list[int]):
        self.policy, self.order = policy, list(order)
        self.seconds: dict[int, list[float]] = {}  # time per unit, by count
        # running sums, by count: a probe that summed its lists at every step slowed the steps it timed
        # (two threads' sampling read 9,700-10,600 chars/s in its turns and 11,600-11,900 in a steady run)
        self.time: dict[int, float] = {}
        self.work: dict[int, float] = {}
        self.round = self.turn = 0
        self._begin_turn()

    @property
    def count(self) -> int:
        return self.order[self.turn]

    def per_work(self, count: int) -> float:
        """`count`'s time per unit of work so far: all its time over all its work, what a run would see."""
        return self.time[count] / self.work[count]

    def close(self) -> bool:
        """Whether the two fastest counts so far are within CLOSE (beside a half-busy core, two rounds of
        turns chose two threads for 32-stream sampling in most runs, where one thread read 7% faster)."""
        times = sorted(self.per_work(count) for count in self.order if count in self.time)
        return len(times) > 1 and times[1] < times[0] * (1 + self.policy.CLOSE)

    def _begin_turn(self) -> None:
        self.units, self.spent = 0, 0.0
        self.settling = self.count not in self.policy._used

    def record(self, seconds: float, per_work: float) -> bool:
        """Take a unit's time; False once the probe is over."""
        p, count = self.policy, self.count
        settling, self.settling = self.settling, False
        others = [self.per_work(c) for c in self.seconds if c != count]
        if settling and not (others and per_work > 2 * p.GIVE_UP * min(others) and seconds >= p.DROP_SECONDS):
            return True  # the unit that paid for starting the threads: not a measurement
        self.seconds.setdefault(count, []).append(seconds)
        self.time[count] = self.time.get(count, 0.0) + seconds
        self.work[count] = self.work.get(count, 0.0) + seconds / per_work
        self.units, self.spent = self.units + 1, self.spent + seconds
        # judged on the turn so far once it has cost DROP_SECONDS: beside a neighbour that spins 20 ms and
        # sleeps 20, a millisecond unit of two threads takes 24 times one thread's or less than half of it
        slower = bool(others) and self.spent >= p.DROP_SECONDS and self.per_work(count) > p.GIVE_UP * min(others)
        if slower:  # two threads beside a busy neighbour have taken 150 times as long as one: enough said
            self.order.remove(count)
            self.turn -= 1
        elif self.units < p.MAX_PER_TURN and (self.units < p.PER_TURN or self.spent < p.TURN_SECONDS) and not (
                others and self.spent >= p.DROP_SECONDS and self.per_work(count) > p.CLEAR * min(others)):
            return True
        return self._next_turn()

    def _next_turn(self) -> bool:
        if self.policy._deferred and self.round == self.turn == 0:
            self.order += self.policy._admit(self.order[0])
        self.turn += 1
        if self.turn >= len(self.order):
            self.round, self.turn = self.round + 1, 0
        if self.round >= self.policy.PROBE_ROUNDS and not (self.close() and self.round < self.policy.MAX_ROUNDS) or (
                len(self.order) < 1 or len(self.order) == 1 and self.order[0] in self.seconds):
            return False
        self._begin_turn()
        return True


class TimedUnit:
    """`with TimedUnit(policy, work):` around one unit of work: starts it at the policy's count and
    reports its time; the decision, if any, is left in `change`."""

    def __init__(self, policy: ThreadPolicy, work: float = 1.0):
        self.policy, self.work, self.change, self.seconds = policy, work, None, 0.0

    def __enter__(self) -> TimedUnit:
        self.policy.start()
        self._started = time.perf_counter()
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.seconds = time.perf_counter() - self._started
            self.change = self.policy.finish(self.seconds, self.work)
