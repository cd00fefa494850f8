"""Reading training and evaluation text: files, directories of text files, or stdin ('-')."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Sequence

from .errors import CharnnError

STDIN = "-"
_SNIFF_BYTES = 8192  # a NUL byte in the first 8 KiB marks a file as binary, as git and grep do


@dataclass(frozen=True)
class Corpus:
    data: bytes
    sources: tuple[str, ...]  # each file read, in order; '-' for stdin
    offsets: tuple[int, ...]  # where each source starts in `data`

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def describe_offset(self, offset: int) -> str:
        """'file.txt: byte 123' for byte `offset` of `data`, naming the source it came from."""
        name, start = self.sources[0], 0
        for source, source_start in zip(self.sources, self.offsets):
            if source_start > offset:
                break
            name, start = source, source_start
        return f"{'stdin' if name == STDIN else name}: byte {offset - start}"

    @property
    def name(self) -> str:
        """A short name for runs trained on this corpus."""
        first = self.sources[0]
        return "stdin" if first == STDIN else Path(first).stem or "corpus"


def is_text_file(path: Path) -> bool:
    with open(path, "rb") as f:
        return b"\0" not in f.read(_SNIFF_BYTES)


def expand_sources(paths: Sequence[str]) -> list[str]:
    """Files as given; directories become their text files, sorted, recursively, hidden ones skipped."""
    if not paths:
        raise CharnnError("no corpus given", hint="pass one or more files, a directory, or - for stdin")
    files: list[str] = []
    for given in paths:
        if given == STDIN:
            files.append(STDIN)
            continue
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
            files.append(given)
        else:
            raise CharnnError(f"{given}: no such file or directory")
    if files.count(STDIN) > 1:
        raise CharnnError("stdin ('-') can be read only once")
    return files


def read_corpus(paths: Sequence[str], stdin: BinaryIO | None = None) -> Corpus:
    """Concatenate the bytes of every source, in order."""
    sources = expand_sources(paths)
    chunks: list[bytes] = []
    offsets: list[int] = []
    position = 0
    for source in sources:
        offsets.append(position)
        if source == STDIN:
            stream = stdin if stdin is not None else sys.stdin.buffer
            if stream.isatty() if hasattr(stream, "isatty") else False:
                raise CharnnError("reading the corpus from stdin, but stdin is a terminal",
                                  hint="pipe text in, e.g. cat book.txt | charnn train -")
            data = stream.read()
        else:
            try:
                with open(source, "rb") as f:
                    data = f.read()
            except IsADirectoryError:
                raise CharnnError(f"{source}: is a directory") from None
            except OSError as err:
                raise CharnnError(f"{source}: cannot read ({err.strerror or err})") from None
        chunks.append(data)
        position += len(data)
    data = b"".join(chunks)
    if not data:
        what = "stdin" if sources == [STDIN] else ", ".join(sources)
        raise CharnnError(f"{what}: corpus is empty")
    return Corpus(data=data, sources=tuple(sources), offsets=tuple(offsets))

