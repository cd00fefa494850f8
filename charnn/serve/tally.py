"""What the worker processes of one `charnn serve` count together: the limits hold for the server as a
whole, whichever process a client reached.

Each worker owns a row of a table in shared memory: the slots of `--max-concurrent` and the connections
of `--max-connections` it holds, and its requests, streams and paused requests as it last published them
(for /health). Taking a slot or a connection compares the total with the limit and adds to the row
under one lock, so two processes taking the last slot at once cannot both have it. A server of one
process keeps the same table in a plain list, without a lock.
"""

from __future__ import annotations

from contextlib import contextmanager

FIELDS = ("slots", "connections", "requests", "streams", "paused", "routed")
LOCK_SECONDS = 0.5  # a worker killed while holding the lock must not stall the others for good


class Tally:
    """The counts of `workers` processes; `row` is the calling process's own (set in each worker)."""

    def __init__(self, workers: int = 1, context=None, rows: int | None = None):
        """One process: a list. Several: `context` (a multiprocessing context) makes the table shared.
        `rows`: the workers' and any other process's (the engine's) that counts requests."""
        self.workers, self.row = workers, 0
        self.rows = rows or workers
        size = self.rows * len(FIELDS)
        if context is None:
            self.counts, self.lock = [0] * size, None
        else:
            self.counts, self.lock = context.RawArray("q", size), context.Lock()

    def _at(self, field: str, row: int | None = None) -> int:
        return (self.row if row is None else row) * len(FIELDS) + FIELDS.index(field)

    @contextmanager
    def _locked(self):
        held = self.lock is not None and self.lock.acquire(timeout=LOCK_SECONDS)
        try:
            yield
        finally:
            if held:
                self.lock.release()

    def take(self, field: str, limit: int) -> bool:
        """One more of `field` for this process, unless the server as a whole already has `limit`."""
        with self._locked():
            if self.total(field) >= limit:
                return False
            self.counts[self._at(field)] += 1
            return True

    def give(self, field: str) -> None:
        with self._locked():
            self.counts[self._at(field)] -= 1

    def total(self, field: str) -> int:
        return sum(self.counts[self._at(field, row)] for row in range(self.rows))

    def others(self, field: str) -> int:
        """The other processes' count (what this one knows of itself it need not read from the table)."""
        return self.total(field) - self.counts[self._at(field)]

    def publish(self, load: dict) -> None:
        """This process's requests, streams and paused requests, for the others' /health."""
        for field in ("requests", "streams", "paused"):
            self.counts[self._at(field)] = load[field]

    def spill(self, field: str, rows: list[int], amount: int, fill: int) -> int:
        """Add `amount` to `field` in the first of `rows` that stays within `fill` with it, else in the
        one with the least (the first of equals); returns its place in `rows`."""
        with self._locked():
            counts = [self.counts[self._at(field, row)] for row in rows]
            place = 0 if counts[0] + amount <= fill else counts.index(min(counts))
            self.counts[self._at(field, rows[place])] += amount
            return place

    def add(self, field: str, amount: int, row: int) -> None:
        with self._locked():
            self.counts[self._at(field, row)] += amount

    def value(self, field: str, row: int) -> int:
        return self.counts[self._at(field, row)]

    def clear(self, row: int) -> None:
        """Forget a process that is gone: its slots and connections went with it."""
        with self._locked():
            for field in FIELDS:
                self.counts[self._at(field, row)] = 0
