"""Generated text onto a byte stream: what `charnn sample` does, as a library.

`BufferedOutput` streams bytes without a system call per character; `SampleWriter` turns each step's ids
into text, ending a sample at its stop string and printing the other samples after the first;
`write_samples` runs the sampler (or beam search) into them; `Conversation` is --interactive's state,
carried from turn to turn. The model is `charnn.generate.sampler.open_sampling_model`'s, whatever steps it:
nothing here imports PyTorch or asks where the model runs.
"""

from __future__ import annotations

import sys
import time
from typing import BinaryIO, Iterable

from ..data.vocab import Vocab
from ..errors import CharnnError
from ..model.spec import beam_bytes, sampling_bytes
from ..runtime.memory import SAMPLE_HINT, require_memory
from .beam import beam_search
from .settings import SampleRequest
from .streams import Steps, Streams, default_prime, require_prime


class PipeClosed(Exception):
    """The reader of the output went away (`charnn sample | head`): stop quietly."""


class BufferedOutput:
    """Writes bytes to a stream (default stdout), flushing often enough to stream but not on every character.

    It keeps its own buffer: with PYTHONUNBUFFERED set (common in containers) stdout's binary layer is
    unbuffered, and every generated character would otherwise cost a system call.
    """

    def __init__(self, stream: BinaryIO | None = None, interval: float = 0.05):
        self.stream = stream if stream is not None else sys.stdout.buffer
        self.interval = interval
        self.pending = bytearray()
        self.last_flush = time.monotonic()
        self.closed = False
        self.reader_gone = False  # the reader closed the stream: what is pending is dropped

    def write(self, data: bytes, force_flush: bool = False) -> None:
        if self.closed:
            return
        self.pending += data
        now = time.monotonic()
        if force_flush or now - self.last_flush >= self.interval:
            # taken out before writing: a signal between the write and a clear() would have the close()
            # that follows write the same bytes twice
            data = bytes(self.pending)
            self.pending.clear()
            try:
                self._write_all(data)
                self.stream.flush()
            except BrokenPipeError:
                self.closed = self.reader_gone = True
                raise PipeClosed from None
            except OSError as err:  # a full disk or device: nothing more can be written
                self.closed = True
                raise CharnnError(f"cannot write the output ({err.strerror or err})") from None
            self.last_flush = now

    def _write_all(self, data: bytes) -> None:
        """An unbuffered stream (PYTHONUNBUFFERED) may take part of a write: write the rest."""
        view = memoryview(data)
        while view:
            written = self.stream.write(view)
            view = view[len(view) if written is None else written:]

    def flush(self) -> None:
        self.write(b"", force_flush=True)

    def close(self) -> None:
        """Flush what is left, unless the reader has gone."""
        try:
            self.flush()
        except PipeClosed:
            pass
        self.closed = True


class SampleWriter:
    """Generated ids -> bytes on the output: sample 0 streams as it is made, the others follow it.

    With a stop string a sample ends where the string first appears (without printing it); sample 0
    holds back only its last len(stop) - 1 bytes, which might be the start of the string.
    """

    def __init__(self, vocab: Vocab, num_samples: int, stop: bytes, output: BufferedOutput):
        self.vocab, self.stop, self.output = vocab, stop, output
        self.texts = [bytearray() for _ in range(num_samples)]  # sample 0: only what is not yet written
        self.done = [False] * num_samples

    def add(self, ids: Iterable[int]) -> bool:
        """One character per sample; True once every sample has reached its stop string."""
        for index, token in enumerate(ids):
            if self.done[index]:
                continue
            text, piece = self.texts[index], self.vocab.token_bytes(token)
            text += piece
            if self.stop:
                found = text.find(self.stop, max(len(text) - len(piece) - len(self.stop) + 1, 0))
                if found >= 0:
                    del text[found:]
                    self.done[index] = True
        self._write_first()
        return all(self.done)

    def _write_first(self) -> None:
        text = self.texts[0]
        ready = len(text) if self.done[0] or not self.stop else len(text) - len(self.stop) + 1
        if ready > 0:
            self.output.write(bytes(text[:ready]))
            del text[:ready]

    def finish(self, separator: bytes, prime: bytes) -> None:
        """Sample 0's held-back end, then every other sample, each after the separator and the prime. A
        separator ending in NUL ends the last sample too: records for `xargs -0` and `read -d ''`, which
        drop an empty last one, or (read) any last one, left open."""
        self.done[0] = True
        self._write_first()
        for text in self.texts[1:]:
            self.output.write(separator + prime + bytes(text))
        if separator.endswith(b"\0"):
            self.output.write(separator)


def encode_prime(vocab: Vocab, prime: bytes, drop_unknown: bool = False) -> tuple:
    """A prime's ids, and how many of its characters the model does not know (left out with
    `drop_unknown`; otherwise they are an error naming them)."""
    ids = vocab.encode(prime, unknown="drop" if drop_unknown else "error")
    if len(ids) == 0:
        raise CharnnError("no prime characters are in the model's vocabulary")
    given = len(prime.decode("utf-8", "surrogateescape") if vocab.mode == "char" else prime)
    return ids, given - len(ids)


def check_memory(model: Steps, request: SampleRequest) -> None:
    """Refuse a batch of samples or beams that cannot fit, before allocating it."""
    if request.beam is not None:
        need, what = beam_bytes(model.config, request.beam, request.length), f"beam search with {request.beam:,} beams"
    else:
        need = sampling_bytes(model.config, request.num_samples, request.length)
        what = f"{request.num_samples:,} samples of {request.length:,} characters"
    require_memory(need, what, model.device, SAMPLE_HINT)


def write_samples(model: Steps, vocab: Vocab, request: SampleRequest, output: BufferedOutput,
                  prime_ids=None) -> None:
    """Generate `request`'s samples from `model` (`SamplingModel.model`) after `prime_ids` (default: the
    model's default prime, not printed) and write them to `output` as they are made."""
    check_memory(model, request)
    shown = vocab.decode_bytes(prime_ids) if prime_ids is not None and request.echo_prime else b""
    if prime_ids is None:
        prime_ids = default_prime(vocab, model.config.reset_ids)
    require_prime(prime_ids)
    if request.beam is not None:
        sampling = request.sampling
        steps = ([i] for i in beam_search(model, prime_ids, request.length, request.beam,
                                          sampling.repetition_penalty, sampling.repetition_window))
    else:
        sampler = Streams.start(model, request.sampling, request.num_samples, request.seed)
        sampler.feed(prime_ids)
        steps = (ids.tolist() for ids in sampler.sample(request.length))
    writer = SampleWriter(vocab, request.num_samples, request.stop, output)
    output.write(shown)
    for ids in steps:
        if writer.add(ids):
            break
    writer.finish(request.separator, shown)
    output.flush()


class Conversation:
    """--interactive: text read and continuations drawn alternately, the state carried from turn to turn."""

    def __init__(self, model: Steps, vocab: Vocab, request: SampleRequest, prime_ids=None):
        self.vocab, self.request = vocab, request
        self.generator = Streams.start(model, request.sampling, seed=request.seed)
        if prime_ids is not None:
            self.generator.feed(prime_ids)

    def reset(self) -> None:
        """Forget everything read and drawn."""
        self.generator.reset()

    def read(self, text: bytes, drop_unknown: bool = False) -> None:
        """Read a line of the user's (nothing: continue from where the last turn stopped)."""
        if text:
            self.generator.feed(self.vocab.encode(text, unknown="drop" if drop_unknown else "error"))
        elif self.generator.logits is None:
            self.generator.feed(default_prime(self.vocab, self.generator.reset_ids))

    def respond(self, output: BufferedOutput) -> None:
        """One turn: stream a continuation to `output`; Ctrl-C cuts it short."""
        writer = SampleWriter(self.vocab, 1, self.request.stop, output)
        try:
            for ids in self.generator.sample(self.request.interactive_length):
                if writer.add(ids.tolist()):
                    break
            writer.finish(b"", b"")
        except KeyboardInterrupt:
            pass
        output.flush()
