"""Writing files so that a crash never leaves half of one: temporary file, fsync, rename; and a write
the machine refuses (a full disk, a quota, a read-only file system) is one error naming the file.

Plain Python, no PyTorch: the run directory, the token cache and checkpoints all write through here.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import CharnnError

TORCH_ARCHIVE_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
WEIGHTS_SUFFIX = ".safetensors"  # weights without pickle (charnn.model.weights): a checkpoint X.pt's are X.safetensors
MAX_JSON_BYTES = 16 << 20  # a run's config.json is a few kB; a larger one is not charnn's


_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # a full disk, a quota, a file-size limit


class WriteFailed(CharnnError):
    """A file could not be written; whatever it held before is kept (see `atomic_write`)."""

    def __init__(self, path: str | os.PathLike, err: OSError):
        self.path, self.errno = Path(path), err.errno
        super().__init__(f"{path}: cannot write ({err.strerror or err})",
                         hint="free some space and run the command again" if self.no_room else None)

    @property
    def no_room(self) -> bool:
        return self.errno in _NO_ROOM


def os_error(err: BaseException) -> OSError | None:
    """The OSError behind `err`: itself, or one it was raised from or while handling (torch.save reports
    a write the disk refused as a RuntimeError raised while handling the OSError)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a write the machine refuses, however it is reported, into a WriteFailed naming `path`."""
    try:
        yield
    except CharnnError:
        raise
    except Exception as err:
        cause = os_error(err)
        if cause is None:
            raise
        raise WriteFailed(path, cause) from None


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # some platforms cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable) -> None:
    """Call write(file) on a temporary file beside `path`, fsync it, then rename it over `path`.

    Readers see the old file or the new one, never half of one; on any failure the old file is
    untouched and the temporary file is removed. A write the machine refuses (a full disk) is a
    WriteFailed naming `path`.
    """
    path = Path(path)
    with writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give them the usual mode
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
    fsync_dir(path.parent)


def append_line(path: str | os.PathLike, line: bytes) -> None:
    """Add one line at the end of `path`; if the disk takes only part of it, the part goes too, so the
    file ends with a whole line, as it did."""
    with writing(path), open(path, "ab", buffering=0) as f:
        size = f.seek(0, os.SEEK_END)
        try:
            rest = memoryview(line)
            while rest:
                rest = rest[f.write(rest):]
        except OSError:
            f.truncate(size)
            raise


def keep_copy(path: str | os.PathLike, copy: str | os.PathLike) -> None:
    """Make `copy` hold what `path` holds now, atomically: a hard link where the file system allows
    one (no extra space; `path` is later replaced by rename, so the copy keeps the old contents)."""
    path, copy = Path(path), Path(copy)
    tmp = copy.with_name(f".{copy.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        atomic_write(copy, lambda f: f.write(path.read_bytes()))
        return
    os.replace(tmp, copy)
    fsync_dir(copy.parent)


def remove_temporaries(directory: str | os.PathLike) -> None:
    """Delete the temporary files that writers killed mid-write (SIGKILL, power loss) left behind."""
    for tmp in Path(directory).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=2) + "\n").encode("utf-8")))


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON in `path`, or None if it is missing, unreadable, not JSON, nested past what Python's
    parser takes, or not a regular file of at most MAX_JSON_BYTES (a FIFO would wait for a writer)."""
    try:
        if not is_regular(path) or os.stat(path).st_size > MAX_JSON_BYTES:
            return None
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None


def is_regular(path: str | os.PathLike) -> bool:
    """Whether `path` is a regular file (after symbolic links): what may be opened without waiting."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def require_file(path: Path, kind: str) -> None:
    """A CharnnError naming `path` unless it is a file with something in it; `kind` names what it should be."""
    if not path.exists():
        raise CharnnError(f"{path}: no such {kind}")
    if path.is_dir():
        raise CharnnError(f"{path}: is a directory, not a {kind}")
    if path.stat().st_size == 0:
        raise CharnnError(f"{path}: {kind} is empty")


def is_torch_archive(path: str | os.PathLike) -> bool:
    """Whether a file starts like a torch.save archive (a zip file); False for anything unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read(len(TORCH_ARCHIVE_MAGIC)) == TORCH_ARCHIVE_MAGIC
    except OSError:
        return False
