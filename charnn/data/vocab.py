"""Vocabulary: characters (default) or bytes, and vectorised encoding/decoding.

Encoding never loops in Python per character: text is turned into code points
with the codec machinery, then mapped to ids through a numpy lookup table.
Large inputs are processed in chunks so memory stays a small multiple of the
input size.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from functools import cached_property
from typing import Iterable, Iterator, Literal

import numpy as np

from ..errors import CharnnError

Mode = Literal["char", "byte"]
_CHUNK_BYTES = 1 << 24  # 16 MiB of input at a time keeps the UTF-32 copy at 64 MiB
_NO_ID = -1


def smallest_dtype(size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if size <= np.iinfo(dtype).max + 1:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {size} does not fit in 32 bits")


def code_points(chunks: Iterable[bytes], describe_offset=None) -> Iterator[np.ndarray]:
    """The Unicode code points of a UTF-8 byte stream given in chunks of any size, as uint32 arrays.

    One decoder spans the whole stream, so a character split between chunks (or files) decodes
    whole; pure-ASCII pieces skip decoding, since their bytes are their code points.
    """
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes of the stream consumed so far
    for chunk in chunks:
        for start in range(0, len(chunk), _CHUNK_BYTES):
            piece = chunk[start : start + _CHUNK_BYTES]
            pending = len(decoder.getstate()[0])  # bytes of a character split by the previous piece
            if not pending and piece.isascii():
                yield np.frombuffer(piece, dtype=np.uint8)
            else:
                text = _decode(decoder, piece, False, offset - pending, describe_offset)
                yield np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
            offset += len(piece)
    pending = len(decoder.getstate()[0])
    _decode(decoder, b"", True, offset - pending, describe_offset)  # a character cut off at the end


def _decode(decoder, piece: bytes, final: bool, start: int, describe_offset) -> str:
    try:
        return decoder.decode(piece, final=final)
    except UnicodeDecodeError as err:
        offset = start + err.start
        where = describe_offset(offset) if describe_offset else f"byte {offset}"
        raise CharnnError(
            f"{where}: not valid UTF-8", hint="train with --bytes for a byte-level model that accepts any file"
        ) from None


@dataclass(frozen=True)
class Vocab:
    """Maps tokens to ids. Char mode: `chars` sorted by code point, id = index. Byte mode: id = byte."""

    mode: Mode = "char"
    chars: str = ""

    # --- construction -----------------------------------------------------------------

    @classmethod
    def byte_level(cls) -> Vocab:
        return cls(mode="byte")

    @classmethod
    def from_data(cls, data: bytes, mode: Mode = "char", describe_offset=None) -> Vocab:
        """The vocabulary of `data`; in char mode, invalid UTF-8 is a CharnnError."""
        return cls.scan([data], mode, describe_offset)[0]

    @classmethod
    def scan(cls, chunks: Iterable[bytes], mode: Mode = "char", describe_offset=None) -> tuple[Vocab, int]:
        """The vocabulary of a byte stream read once, in chunks, and its length in tokens."""
        if mode == "byte":
            return cls.byte_level(), sum(len(chunk) for chunk in chunks)
        seen = np.zeros(0, dtype=bool)
        count = 0
        for points in code_points(chunks, describe_offset):
            counts = np.bincount(points)
            if len(counts) > len(seen):
                seen = np.concatenate([seen, np.zeros(len(counts) - len(seen), dtype=bool)])
            seen[: len(counts)] |= counts > 0
            count += len(points)
        return cls(mode="char", chars="".join(map(chr, np.flatnonzero(seen)))), count

    # --- properties ---------------------------------------------------------------------

    @property
    def size(self) -> int:
        return 256 if self.mode == "byte" else len(self.chars)

    def __len__(self) -> int:
        return self.size

    @property
    def dtype(self) -> np.dtype:
        return smallest_dtype(self.size)

    @cached_property
    def _lookup(self) -> np.ndarray:
        """Code point -> id, with one extra slot at the end for every code point beyond the vocabulary."""
        points = np.frombuffer(self.chars.encode("utf-32-le"), dtype="<u4")
        table = np.full(int(points.max(initial=0)) + 2, _NO_ID, dtype=np.int32)
        table[points] = np.arange(len(points))
        return table

    @cached_property
    def _char_array(self) -> np.ndarray:
        return np.array(list(self.chars), dtype="U1")  # stored as UCS-4, so .tobytes() is UTF-32

    @cached_property
    def _char_bytes(self) -> list[bytes]:
        return [c.encode("utf-8", "surrogatepass") for c in self.chars]

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        return [bytes([i]) for i in range(256)] if self.mode == "byte" else self._char_bytes

    def token_bytes(self, token_id: int) -> bytes:
        """One token's bytes, looked up: what decode_bytes gives for it, without its per-call setup
        (the sampler prints one token at a time)."""
        return self._token_bytes[token_id]

    def token_text(self, token_id: int) -> str:
        """A readable form of one token, for messages."""
        if self.mode == "byte":
            return repr(bytes([token_id]))[2:-1]
        return repr(self.chars[token_id])[1:-1]

    # --- encoding -----------------------------------------------------------------------

    def _map_points(self, points: np.ndarray) -> np.ndarray:
        table = self._lookup
        limit = len(table) - 1  # the catch-all slot for code points beyond the vocabulary
        if points.dtype == np.uint8 and limit >= 255:  # an ASCII piece: every byte is already in range
            return table[points]
        return table[np.minimum(points, points.dtype.type(limit))]

    def encode_bytes(self, data: bytes, describe_offset=None) -> tuple[np.ndarray, int]:
        """Encode UTF-8 (char mode) or raw (byte mode) data; unknown characters are dropped.

        Returns (ids, number of unknown characters dropped). ids use `self.dtype`.
        """
        if self.mode == "byte":
            return np.frombuffer(data, dtype=np.uint8).copy(), 0
        parts, unknown = [], 0
        for ids, dropped in self.encode_chunks([data], describe_offset):
            parts.append(ids)
            unknown += dropped
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)
        return ids, unknown

    def encode_chunks(self, chunks: Iterable[bytes], describe_offset=None) -> Iterator[tuple[np.ndarray, int]]:
        """Encode a byte stream chunk by chunk: yields (ids, unknown characters dropped from them)."""
        if self.mode == "byte":
            for chunk in chunks:
                yield np.frombuffer(chunk, dtype=np.uint8), 0
            return
        for points in code_points(chunks, describe_offset):
            ids = self._map_points(points)
            known = ids != _NO_ID
            dropped = 0
            if not known.all():
                dropped = int((~known).sum())
                ids = ids[known]
            yield ids.astype(self.dtype), dropped

    def encode(self, text: str | bytes, unknown: Literal["error", "drop"] = "error") -> np.ndarray:
        """Encode a short text such as a prime. Unknown characters raise CharnnError or are dropped."""
        if self.mode == "byte":
            data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")
            return np.frombuffer(data, dtype=np.uint8).copy()
        if isinstance(text, bytes):
            text = text.decode("utf-8", "surrogateescape")
        points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        ids = self._map_points(points)
        missing = ids == _NO_ID
        if missing.any():
            if unknown == "error":
                names = sorted({text[i] for i in np.flatnonzero(missing)})
                shown = ", ".join(repr(c) for c in names[:10]) + (" ..." if len(names) > 10 else "")
                raise CharnnError(f"{len(names)} character(s) not in the model's vocabulary: {shown}",
                                  hint="use --drop-unknown to leave them out")
            ids = ids[~missing]
        return ids.astype(self.dtype)

    # --- decoding -----------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        """ids -> UTF-8 bytes (char mode) or the raw bytes (byte mode)."""
        ids = np.asarray(ids, dtype=np.int64).ravel()
        if self.mode == "byte":
            return ids.astype(np.uint8).tobytes()
        table = self._char_bytes
        return b"".join(table[i] for i in ids)

    def decode(self, ids) -> str:
        """ids -> text; in byte mode, bytes that are not UTF-8 become U+FFFD."""
        if self.mode == "byte":
            return self.decode_bytes(ids).decode("utf-8", "replace")
        ids = np.asarray(ids, dtype=np.int64).ravel()
        return self._char_array[ids].tobytes().decode("utf-32-le")

    # --- persistence --------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {"mode": self.mode, "chars": self.chars}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        """A saved vocabulary, checked (a file may hold anything): ValueError says what is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"the vocabulary must be an object, not {type(data).__name__}")
        mode = data.get("mode")
        if mode not in ("char", "byte"):
            raise ValueError(f"unknown vocabulary mode {str(mode)[:40]!r}")
        if mode == "byte":
            return cls.byte_level()
        chars = data.get("chars", "")
        if not isinstance(chars, str):
            raise ValueError(f"the vocabulary's characters must be a string, not {type(chars).__name__}")
        points = np.frombuffer(chars.encode("utf-32-le", "surrogatepass"), dtype="<u4")
        if ((points >= 0xD800) & (points <= 0xDFFF)).any():
            raise ValueError("the vocabulary holds a lone surrogate (U+D800-U+DFFF), which is no character")
        if (np.diff(points.astype(np.int64)) <= 0).any():
            raise ValueError("the vocabulary's characters are not distinct and sorted by code point")
        return cls(mode="char", chars=chars)
