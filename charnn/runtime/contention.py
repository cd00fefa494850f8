"""Signs that other work wants the cores, which a thread policy (charnn.runtime.threads) reads before it
times whole units at a thread count: a small trial of parallel work, and the share of the cores that
other processes kept busy (Linux's /proc/stat).

Both are cheap on an idle machine. Beside a process spinning one core of two, a single trial of two
threads has stalled for 310-350 ms at a barrier (the partner waited for a time slice): 2% of a
15-second evaluation before any of it was done. The cores' use says as much for nothing.
"""

from __future__ import annotations

import os
import time
from typing import Callable

SLACK = 0.75  # of a core: a count n needs n - SLACK cores that other processes left free


def crowded(counts: list[int], cores: int, others: float | None) -> set[int]:
    """The counts that `others` cores kept busy by other processes (of the `cores` this one may use)
    leave no room for. Beside a process spinning half a core two threads of two still ran a little faster
    than one; beside one spinning a whole core they ran at two thirds of one thread's speed."""
    return set() if others is None else {n for n in counts if n > 1 and cores - others < n - SLACK}


def busy_seconds(stat: str, cpus: set[int], ticks_per_second: int) -> float:
    """Seconds the cores `cpus` have spent busy, by all processes, from the text of /proc/stat: everything
    but idle and iowait (steal too: a vCPU that waits for its host is not free)."""
    busy = 0
    for line in stat.splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            ticks = [int(x) for x in fields[:8]]
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / ticks_per_second


def watch_cores() -> Callable[[], float | None]:
    """Starts watching the cores this process may run on; the function returned tells how many of them,
    on average since, other processes kept busy (None where the system cannot say)."""
    before = _reading()

    def others() -> float | None:
        after = _reading()
        if before is None or after is None or after[2] - before[2] < 0.05:  # ticks of 10 ms: too few to say
            return None
        return max(0.0, ((after[0] - before[0]) - (after[1] - before[1])) / (after[2] - before[2]))

    return others


def _reading() -> tuple[float, float, float] | None:
    """The cores' busy seconds (all processes), this process's CPU seconds, and the clock."""
    try:
        cpus = os.sched_getaffinity(0)
        with open("/proc/stat") as f:
            stat = f.read()
        busy = busy_seconds(stat, cpus, os.sysconf("SC_CLK_TCK"))
    except (AttributeError, OSError, ValueError, IndexError):
        return None
    own = os.times()
    return busy, own.user + own.system, time.monotonic()


TRIAL_TRIES, TRIAL_SPAN = 3, 0.04  # tries at the fewest threads; seconds of them at each other count (> a time slice)


def viable(counts: list[int], trial: Callable[[int], float] | None, give_up: float) -> list[int]:
    """The counts worth timing whole units at, in their order: always the fewest threads, and the others
    whose `trial` (a small piece of parallel work) takes under `give_up` times the fewest threads' best
    try, on average over TRIAL_SPAN seconds of tries. Beside a busy neighbour a training step on two of two
    cores has taken 7 s where one thread takes 0.07 (each barrier waited for a time slice). One thread has
    no barrier, so a slow trial of it is a lost time slice, never a reason to leave it out."""
    if trial is None or len(counts) < 2:
        return counts
    fewest = min(counts)
    yardstick = min(trial(fewest) for _ in range(TRIAL_TRIES))  # best of three: any try may lose a slice
    kept = [fewest]
    for count in sorted(set(counts) - {fewest}):
        # a few tries in a row can all fall while a spinning neighbour waits for its slice (beside one
        # spinning core, three quick tries let a 6-second training unit through in 2 of 5 runs), so the
        # tries go on for longer than a slice, and their average decides. The first pays for starting the
        # threads, unless it stalled for two spans itself (0.2 s beside two spinning cores: enough said).
        first = trial(count)
        tries = [first] if first >= 2 * TRIAL_SPAN else [trial(count)]
        while sum(tries) < TRIAL_SPAN and len(tries) < 1000:  # (a trial too quick to time ends too)
            tries.append(trial(count))
        if sum(tries) / len(tries) <= give_up * yardstick:
            kept.append(count)
    return [count for count in counts if count in kept]
