"""Encoded corpora on disk: any size of text streamed into a token file, memory-mapped, and cached.

Encoding reads the corpus twice in chunks and never holds it whole: the first pass finds the
vocabulary, the length in tokens and the fingerprint, the second writes the ids straight into a
.npy file of exactly that length. Training memory-maps that file, so a 1 GB corpus costs the pages
of its token file that are in use, not gigabytes of Python objects.

The cache lives in the runs directory (`.cache/`), one entry per list of source files and
vocabulary mode. An entry is used only while every file's size and modification time match what
was recorded when it was written; a changed corpus is encoded again and replaces it. A run's own
tokens.npy is a hard link to the entry (a copy across file systems), so a later change to the
cache never touches a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..errors import CharnnError
from .corpus import CorpusFiles, corpus_files
from .files import writing
from .vocab import Vocab

CACHE_DIR = ".cache"
CACHE_VERSION = 1


@dataclass(frozen=True)
class EncodedCorpus:
    path: Path  # the .npy token file
    vocab: Vocab
    num_tokens: int
    fingerprint: str  # sha256 of the corpus bytes
    bytes: int
    cached: bool = False  # True when it came from the cache without reading the corpus

    def tokens(self) -> np.ndarray:
        return open_tokens(self.path)

    @property
    def temporary(self) -> bool:
        """Stdin's encoding, in a temporary file until a run takes it."""
        return self.path.name.endswith(".tmp")

    def to_dict(self) -> dict:
        return {"vocab": self.vocab.to_dict(), "num_tokens": self.num_tokens,
                "fingerprint": self.fingerprint, "bytes": self.bytes}


def open_tokens(path: str | Path) -> np.ndarray:
    """Memory-map a token file. Copy-on-write: writable as torch wants, but the file never changes."""
    try:
        return np.load(path, mmap_mode="c", allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CharnnError(f"{path}: damaged ({err})") from None


def _hashing(chunks: Iterable[bytes], digest) -> Iterator[bytes]:
    for chunk in chunks:
        digest.update(chunk)
        yield chunk


def encode_to_file(corpus: CorpusFiles, out: str | Path, mode: str = "char") -> EncodedCorpus:
    """Encode `corpus` into the .npy file `out` (written in place: callers write to a temporary name)."""
    digest = hashlib.sha256()
    vocab, count = Vocab.scan(_hashing(corpus.chunks(), digest), mode, corpus.describe_offset)
    if count == 0:
        raise CharnnError(f"{', '.join(corpus.sources)}: corpus is empty")
    written = 0
    with open(out, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False, "shape": (count,)}
        np.lib.format.write_array_header_1_0(f, header)
        for ids, _ in vocab.encode_chunks(corpus.chunks(), corpus.describe_offset):
            f.write(ids.tobytes())
            written += len(ids)
    if written != count:
        raise CharnnError(f"{', '.join(corpus.sources)}: the corpus changed while it was being read")
    return EncodedCorpus(Path(out), vocab, count, digest.hexdigest(), corpus.total_bytes)


def _cache_key(corpus: CorpusFiles, mode: str) -> str:
    names = [os.path.abspath(path) for path in corpus.paths]
    return hashlib.sha256(json.dumps([CACHE_VERSION, mode, names]).encode("utf-8")).hexdigest()[:20]


def _from_cache(meta_path: Path, token_path: Path, signature: list) -> EncodedCorpus | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("signature") != signature or not token_path.is_file():
            return None
        encoded = EncodedCorpus(token_path, Vocab.from_dict(meta["vocab"]), int(meta["num_tokens"]),
                                str(meta["fingerprint"]), int(meta["bytes"]), cached=True)
        if len(encoded.tokens()) != encoded.num_tokens:
            return None
        return encoded
    except (OSError, ValueError, KeyError, TypeError, OverflowError, RecursionError, CharnnError):
        return None  # a missing, stale or damaged entry is simply rebuilt


def cache_dir(runs_root: str | Path) -> Path:
    """Where the token cache of a runs root lives (also where stdin is copied while it is encoded)."""
    return Path(runs_root) / CACHE_DIR


def encode_cached(corpus: CorpusFiles, mode: str, cache_root: str | Path) -> EncodedCorpus:
    """The encoded corpus from the cache of the runs root `cache_root`, encoding (and caching) it if needed.

    Stdin has no file to check for changes: it is encoded into a temporary file there, uncached;
    the caller moves it into the run directory.
    """
    directory = cache_dir(cache_root)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CharnnError(f"{directory}: cannot create the token cache ({err.strerror})") from None
    signature = corpus.signature()
    if signature is None:
        tmp = directory / f".stdin-{os.getpid()}.npy.tmp"
        try:
            with writing(directory):
                return encode_to_file(corpus, tmp, mode)
        except BaseException:  # an error, Ctrl-C or SIGTERM: no half-written copy stays behind
            tmp.unlink(missing_ok=True)
            raise
    key = _cache_key(corpus, mode)
    token_path, meta_path = directory / f"{key}.npy", directory / f"{key}.json"
    hit = _from_cache(meta_path, token_path, signature)
    if hit is not None:
        return hit
    tmp_tokens = directory / f".{key}.{os.getpid()}.npy.tmp"
    tmp_meta = directory / f".{key}.{os.getpid()}.json.tmp"
    try:
        with writing(token_path):
            encoded = encode_to_file(corpus, tmp_tokens, mode)
            tmp_meta.write_text(json.dumps({"signature": signature, "sources": list(corpus.sources),
                                            **encoded.to_dict()}), encoding="utf-8")
            os.replace(tmp_tokens, token_path)
            os.replace(tmp_meta, meta_path)  # last: the entry is valid only once both are in place
    finally:
        tmp_tokens.unlink(missing_ok=True)
        tmp_meta.unlink(missing_ok=True)
    if corpus.signature() != signature:  # edited while we read it: do not trust the entry next time
        meta_path.unlink(missing_ok=True)
    return EncodedCorpus(token_path, encoded.vocab, encoded.num_tokens, encoded.fingerprint, encoded.bytes)


def place_tokens(encoded: EncodedCorpus, target: Path) -> None:
    """Give a run its own token file at `target`: a hard link to the cache entry, else a copy; a
    temporary (stdin's encoding) is moved there."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.unlink(missing_ok=True)
    if encoded.temporary:
        try:
            os.replace(encoded.path, target)
            return
        except OSError:
            pass
    with writing(target):
        try:
            os.link(encoded.path, tmp)
        except OSError:
            try:
                shutil.copyfile(encoded.path, tmp)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, target)
    if encoded.temporary:
        encoded.path.unlink(missing_ok=True)


def encode_files(paths, out: str | Path, mode: str = "char") -> EncodedCorpus:
    """Encode files (or '-') into `out` without the cache: the library's one-call form."""
    with corpus_files(paths, spool_dir=Path(out).parent) as corpus, writing(out):
        return encode_to_file(corpus, out, mode)
