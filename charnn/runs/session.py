"""A run's lifecycle: claimed, written, then settled on its first model or abandoned.

`RunSession` is the one object that acts on a claim (charnn.runs.claim's rules):

- it claims a directory: a new run's (`new`: runs/NAME, numbered, or --out, checked again under the
  lock; an old run there is set aside with --overwrite), or a run that training continues (`resume`);
  another process of a distributed run `joins` the run rank 0 claimed and writes nothing;
- it holds the directory's lock until `close` or `release`;
- it makes the writer the trainer writes to (`writer`), and hears from it when the first best.pt is
  written: an old run set aside then goes for good (`settle`);
- it makes the run `runs/latest` (`remember`);
- a run that ends before its first model, or fails before training starts, is abandoned: what it wrote
  goes, and an old run set aside comes back in its place.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..config import TrainConfig
from ..errors import CharnnError
from .claim import RunLock, check_out, drop_set_aside, remove_if_empty, remove_own_entries, restore_set_aside, set_aside
from .rundir import RunDir, remember_latest, runs_root
from .writer import RunWriter


class RunSession:
    """One training session's hold on its run directory, from the claim to the release."""

    def __init__(self, run: RunDir, claimed: bool = True, created: bool = False):
        """`claimed`: this process writes the run (locked); `created`: its directory is new."""
        self.run, self.created = run, created
        self.lock = RunLock(run) if claimed else None
        self.replacing = False  # an old run is set aside until this one writes its first best.pt
        self.fresh = created  # a new run's directory: new, or empty when claimed
        self._writer: RunWriter | None = None
        self._ended = False  # released or abandoned: nothing more to do
        if claimed:
            restore_set_aside(run)  # a replacement a killed process left unfinished

    # --- claiming ----------------------------------------------------------------------------

    @classmethod
    def new(cls, name: str, out: str | os.PathLike | None = None, overwrite: bool = False) -> RunSession:
        """The locked directory for a new run: `out` (checked again under the lock), or runs/NAME,
        runs/NAME-2, ... whichever this process creates first."""
        if out is None:
            return cls._numbered(runs_root(), name)
        check_out(out, overwrite)
        path = Path(out)
        created = not path.exists()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CharnnError(f"--out {path}: cannot create ({err.strerror})") from None
        session = cls(RunDir(path), created=created)
        try:
            check_out(out, overwrite)  # another process may have made a run here before we locked it
            if session.run.owned():
                set_aside(session.run)
                session.replacing = True
            else:
                session.fresh = True  # new or empty (check_out refused anything else)
        except BaseException:
            session.abandon()
            raise
        return session

    @classmethod
    def _numbered(cls, root: Path, name: str) -> RunSession:
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise CharnnError(f"{root}: cannot create the runs directory ({err.strerror})") from None
        for n in range(1, 100_000):
            path = root / (name if n == 1 else f"{name}-{n}")
            try:
                path.mkdir()
            except FileExistsError:
                continue
            except OSError as err:
                raise CharnnError(f"{path}: cannot create ({err.strerror})") from None
            return cls(RunDir(path), created=True)
        raise CharnnError(f"{root}: no free run name for {name}")

    @classmethod
    def resume(cls, run: RunDir) -> RunSession:
        """The lock on a run that training continues."""
        if not run.path.is_dir():
            raise CharnnError(f"--resume {run.path}: no such run directory")
        if not os.access(run.path, os.W_OK):
            raise CharnnError(f"--resume {run.path}: cannot write there (read-only)",
                              hint="a resumed run writes its checkpoints and metrics into its directory")
        return cls(run)

    @classmethod
    def join(cls, run: RunDir) -> RunSession:
        """Another process's view of the run rank 0 claimed: it writes nothing and holds no lock."""
        return cls(run, claimed=False)

    # --- while training ----------------------------------------------------------------------

    def writer(self, config: TrainConfig) -> RunWriter:
        """What the trainer writes to: this session's run, by this process if it holds the claim."""
        self._writer = RunWriter(self.run, config, writes=self.lock is not None, on_best=self.settle,
                                 old_run_waits=lambda: self.replacing)
        return self._writer

    def remember(self) -> None:
        """This run is runs/latest: what `charnn sample` and `charnn eval` use by default."""
        if self.lock is not None:
            remember_latest(self.run.path)

    def settle(self) -> None:
        """The run has a model: an old run set aside goes for good."""
        if self.replacing:
            drop_set_aside(self.run)
            self.replacing = False

    # --- the end -----------------------------------------------------------------------------

    def close(self) -> bool:
        """Training ended (or failed): a run that was to replace another and never wrote a model gives the
        old one back (True); the lock is released either way."""
        discarded = self.replacing
        self.release()
        return discarded

    def release(self) -> None:
        """Let go of the run directory. A new run that never started training (Ctrl-C just before) leaves
        nothing behind, and a run it was to replace comes back."""
        started = self._writer is not None and self._writer.started
        if self.replacing or (self.fresh and not started):
            self.abandon()
        elif self.lock is not None:
            self.lock.release()
            self._ended = True

    def abandon(self) -> None:
        """The run stopped before it had a model: remove what it wrote and put back what was there."""
        if self.lock is None or self._ended:
            return
        self._ended = True
        if self.replacing or self.fresh:
            remove_own_entries(self.run)
        if self.replacing:
            restore_set_aside(self.run)
            self.replacing = False
        self.lock.release()
        if self.created:
            remove_if_empty(self.run.path)
