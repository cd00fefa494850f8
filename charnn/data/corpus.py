"""Reading training and evaluation text: files, directories of text files, or stdin ('-').

A corpus of any size is read as a stream of chunks (`corpus_files`), never whole: stdin is first
copied to a temporary file so it can be read twice like any other source. Short texts that are
needed whole (evaluation, primes) use `read_corpus`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from ..errors import CharnnError
from .files import writing

STDIN = "-"
_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a file as binary, as git and grep do
_READ_BYTES = 1 << 24  # 16 MiB at a time
_DISK_RESERVE = 1 << 30  # a copy of a stream stops before it leaves less than 1 GiB free


def describe_offset(sources: Sequence[str], offsets: Sequence[int], offset: int) -> str:
    """'file.txt: byte 123' for byte `offset` of the concatenated sources, naming the one it is in."""
    name, start = sources[0], 0
    for source, source_start in zip(sources, offsets):
        if source_start > offset:
            break
        name, start = source, source_start
    return f"{'stdin' if name == STDIN else name}: byte {offset - start}"


def corpus_name(sources: Sequence[str]) -> str:
    """A short name for runs trained on these sources."""
    first = sources[0]
    return "stdin" if first == STDIN else Path(first).stem or "corpus"


@dataclass(frozen=True)
class Corpus:
    data: bytes
    sources: tuple[str, ...]  # each file read, in order; '-' for stdin
    offsets: tuple[int, ...]  # where each source starts in `data`

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe_offset(self, offset: int) -> str:
        return describe_offset(self.sources, self.offsets, offset)

    @property
    def name(self) -> str:
        return corpus_name(self.sources)


@dataclass(frozen=True)
class CorpusFiles:
    """The sources of a corpus, read in chunks on demand, in order, as one byte stream."""

    sources: tuple[str, ...]  # as given; '-' for stdin
    paths: tuple[str, ...]  # the file each is read from (stdin's temporary copy for '-')
    sizes: tuple[int, ...]

    @property
    def offsets(self) -> tuple[int, ...]:
        starts, position = [], 0
        for size in self.sizes:
            starts.append(position)
            position += size
        return tuple(starts)

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    @property
    def name(self) -> str:
        return corpus_name(self.sources)

    @property
    def from_stdin(self) -> bool:
        return STDIN in self.sources

    def describe_offset(self, offset: int) -> str:
        return describe_offset(self.sources, self.offsets, offset)

    def chunks(self, size: int = _READ_BYTES) -> Iterator[bytes]:
        for source, path in zip(self.sources, self.paths):
            try:
                with open(path, "rb") as f:
                    while chunk := f.read(size):
                        yield chunk
            except OSError as err:
                raise CharnnError(f"{source}: cannot read ({err.strerror or err})") from None

    def signature(self) -> list | None:
        """(absolute path, size, modification time) of every file; None for stdin, which has none."""
        if self.from_stdin:
            return None
        result = []
        for path in self.paths:
            stat = os.stat(path)
            result.append([os.path.abspath(path), stat.st_size, stat.st_mtime_ns])
        return result

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


def is_text_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" not in f.read(_SNIFF_BYTES)
    except OSError as err:
        raise CharnnError(f"{path}: cannot read ({err.strerror or err})") from None


def _check_source(given: str, path: Path) -> None:
    """A file or a pipe can be read; a device (/dev/zero, a terminal) cannot be a corpus."""
    try:
        mode = path.stat().st_mode
    except OSError as err:
        raise CharnnError(f"{given}: cannot read ({err.strerror or err})") from None
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISSOCK(mode):
        raise CharnnError(f"{given}: a device, not a file or pipe", hint="name a text file, a directory or - for stdin")


def expand_sources(paths: Sequence[str]) -> list[str]:
    """Files as given; directories become their text files, sorted, recursively, hidden ones skipped."""
    if not paths:
        raise CharnnError("no corpus given", hint="pass one or more files, a directory, or - for stdin")
    files: list[str] = []
    for given in paths:
        if given == STDIN:
            files.append(STDIN)
            continue
        if not given:
            raise CharnnError("an empty corpus path", hint="name a file, a directory or - for stdin")
        path = Path(given)
        if path.is_dir():
            found = sorted(
                str(p)
                for p in path.rglob("*")
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and is_text_file(p)
            )
            if not found:
                raise CharnnError(f"{given}: directory has no text files")
            files.extend(found)
        elif path.exists():
            _check_source(given, path)
            files.append(given)
        else:
            raise CharnnError(f"{given}: no such file or directory")
    if files.count(STDIN) > 1:
        raise CharnnError("stdin ('-') can be read only once")
    return files


def _read_as_stream(path: Path) -> bool:
    """A pipe (bash's <(command)) can be read only once, and a file whose size says 0 may still have
    text (/proc files): both are copied first, like stdin."""
    return not path.is_file() or path.stat().st_size == 0


def _stdin() -> BinaryIO:
    if sys.stdin is None:
        raise CharnnError("stdin is closed: there is no text to read from -", hint="pipe text in, or name a file")
    return sys.stdin.buffer


def _spool_file(source: str, directory: str | Path | None) -> str:
    try:
        with open(source, "rb") as stream:
            return _spool(stream, directory, source)
    except OSError as err:
        raise CharnnError(f"{source}: cannot read ({err.strerror or err})") from None


def _spool(stream: BinaryIO, directory: str | Path | None, source: str = "stdin") -> str:
    """Copy a stream (stdin, a pipe) to a temporary file, chunk by chunk, so it can be read more than
    once. The copy stops, and is removed, if it would leave the disk nearly full, and on Ctrl-C."""
    if stream.isatty() if hasattr(stream, "isatty") else False:
        raise CharnnError("reading the corpus from stdin, but stdin is a terminal",
                          hint="pipe text in, e.g. cat book.txt | charnn train -")
    try:
        if directory is not None:
            Path(directory).mkdir(parents=True, exist_ok=True)
        fd, path = tempfile.mkstemp(prefix=".stdin-", suffix=".tmp", dir=directory)
    except OSError as err:
        raise CharnnError(f"{directory}: cannot write a copy of {source} there ({err.strerror})") from None
    try:
        with writing(Path(path).parent), os.fdopen(fd, "wb") as f:
            _copy_with_room(stream, f, Path(path).parent, source)
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return path


def _copy_with_room(stream: BinaryIO, out, directory: Path, source: str) -> None:
    """Copy, stopping an endless stream before the disk fills: it may leave no less than the reserve
    free, or half of what was free, on a disk that had less (a small input still fits there)."""
    copied = 0
    reserve = min(_DISK_RESERVE, shutil.disk_usage(directory).free // 2)
    while chunk := _read(stream, source):
        free = shutil.disk_usage(directory).free
        if free - len(chunk) < reserve:
            raise CharnnError(f"{source}: still going after {copied / 1e9:,.1f} GB, and the disk is nearly full "
                              f"({free / 1e9:,.1f} GB free in {directory})", hint="is the input endless (yes, /dev/zero)?")
        out.write(chunk)
        copied += len(chunk)


def _read(stream: BinaryIO, source: str) -> bytes:
    try:
        return stream.read(_READ_BYTES)
    except OSError as err:  # not a write: `writing` would call it one
        raise CharnnError(f"{source}: cannot read ({err.strerror or err})") from None


@contextmanager
def corpus_files(paths: Sequence[str], stdin: BinaryIO | None = None,
                 spool_dir: str | Path | None = None) -> Iterator[CorpusFiles]:
    """The corpus as a `CorpusFiles`; stdin's temporary copy (in `spool_dir`) is removed on exit."""
    sources = expand_sources(paths)
    spooled: list[str] = []
    try:
        files = []
        for source in sources:
            if source == STDIN:
                spooled.append(_spool(stdin if stdin is not None else _stdin(), spool_dir))
                files.append(spooled[-1])
            elif Path(source).is_dir():
                raise CharnnError(f"{source}: is a directory")
            elif _read_as_stream(Path(source)):
                spooled.append(_spool_file(source, spool_dir))
                files.append(spooled[-1])
            else:
                files.append(source)
        sizes = []
        for source, path in zip(sources, files):
            try:
                sizes.append(os.stat(path).st_size)
            except OSError as err:
                raise CharnnError(f"{source}: cannot read ({err.strerror or err})") from None
        corpus = CorpusFiles(sources=tuple(sources), paths=tuple(files), sizes=tuple(sizes))
        if corpus.total_bytes == 0:
            what = "stdin" if sources == [STDIN] else ", ".join(sources)
            raise CharnnError(f"{what}: corpus is empty")
        yield corpus
    finally:
        for path in spooled:
            Path(path).unlink(missing_ok=True)


def read_corpus(paths: Sequence[str], stdin: BinaryIO | None = None) -> Corpus:
    """Concatenate the bytes of every source, in order, in memory (for texts that fit comfortably)."""
    with corpus_files(paths, stdin) as files:
        data = b"".join(files.chunks())
        return Corpus(data=data, sources=files.sources, offsets=files.offsets)
