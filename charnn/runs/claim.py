"""Who may write a run directory: charnn writes only where it may, one writer at a time, and replaces an
old run only once the new one has a model to put in its place. `RunSession` (charnn.runs.session) is
the one that claims a directory and carries these out; `check_out` answers an --out early.

- A new run goes into a new or empty directory, or (with --overwrite) into one that holds a run
  charnn made (`RunDir.owned`); a directory holding anything else is refused, with or without
  --overwrite.
- The process training in a run holds an OS lock (flock) on the directory, which the system
  releases when the process ends, however it ends: a second writer is refused with the first one's
  process id, and a killed one leaves no stale lock.
- --overwrite first moves the old run's files aside (into `.replaced/`); they are deleted when the
  new run writes its first best.pt, and put back if it stops before that. A process killed in
  between leaves them aside, and the next claim of the directory puts them back.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from pathlib import Path

from ..errors import CharnnError
from .rundir import RunDir


class RunLock:
    """An exclusive OS lock (flock) on a run directory itself, held while this process trains in it: no
    lock file is written, and the system drops the lock when the process ends, however it ends."""

    def __init__(self, run: RunDir):
        self.run = run
        try:
            self.fd = os.open(run.path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as err:
            raise CharnnError(f"{run.path}: cannot open ({err.strerror})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(self.fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise CharnnError(f"{run.path}: {_holder(run.path)} is training in this run directory",
                              hint="wait for it to finish, or stop it, before writing here") from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None


def _holder(path: Path) -> str:
    """'charnn process 1234': the process holding a flock on `path`, from /proc/locks where there is one."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode):
                    return f"charnn process {fields[4]}"
    except (OSError, ValueError):
        pass
    return "another charnn process"


def set_aside(run: RunDir) -> None:
    """Move an old run's files out of the way (--overwrite), to delete once the new run has a model."""
    aside = run.path / RunDir.SET_ASIDE
    aside.mkdir()
    for entry in run.own_entries():
        target = aside / entry.relative_to(run.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(entry, target)
    remove_if_empty(run.kept_dir)


def drop_set_aside(run: RunDir) -> None:
    """The new run has a model: the old one goes for good."""
    shutil.rmtree(run.path / RunDir.SET_ASIDE, ignore_errors=True)


def remove_own_entries(run: RunDir) -> None:
    """What charnn wrote in a run directory, gone (a new run that never had a model)."""
    for entry in run.own_entries():
        entry.unlink(missing_ok=True)
    remove_if_empty(run.kept_dir)


def remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass


def restore_set_aside(run: RunDir) -> None:
    """Put back an old run that a replacement set aside and never finished (it stopped before a model, or the
    process was killed)."""
    aside = run.path / RunDir.SET_ASIDE
    if not aside.is_dir() or not RunDir(aside).owned():  # only a run charnn set aside there
        return
    for entry in run.own_entries():
        entry.unlink(missing_ok=True)
    for entry in sorted(aside.rglob("*")):
        if entry.is_file():
            target = run.path / entry.relative_to(aside)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(entry, target)
    shutil.rmtree(aside, ignore_errors=True)


def check_out(out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an --out that charnn must not write: a file, a non-empty directory that is not a run
    charnn made, or a run without --overwrite."""
    path = Path(out)
    if str(out) == "":
        raise CharnnError("--out needs a directory name")
    if path.exists() and not path.is_dir():
        raise CharnnError(f"--out {path}: exists and is not a directory")
    if not path.is_dir():
        _check_creatable(path)
        return
    run = RunDir(path)
    if run.owned():
        if not overwrite:
            raise CharnnError(f"--out {path}: already holds a run",
                              hint="use --resume to continue it, --overwrite to replace it, or another --out")
        return
    if _has_entries(path):
        raise CharnnError(f"--out {path}: holds files that are not a charnn run; charnn trains only in a new or "
                          "empty directory, or replaces a run it made (--overwrite)", hint="choose another --out")


def _check_creatable(path: Path) -> None:
    """A directory that does not exist yet can be made: its nearest existing parent is writable."""
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise CharnnError(f"--out {path}: cannot create it ({parent}: Permission denied)")


def _has_entries(path: Path) -> bool:
    try:
        return any(path.iterdir())
    except OSError as err:
        raise CharnnError(f"--out {path}: cannot read ({err.strerror})") from None
