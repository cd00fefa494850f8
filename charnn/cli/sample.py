"""`charnn sample`: options into a SampleRequest, the library streams the text to stdout.

--interactive's prompt lives here (it talks to a person); what a turn does is the library's
`Conversation`.
"""

from __future__ import annotations

import os
import select
import sys
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from ..errors import CharnnError
from ..generate.settings import LIMITS, SampleRequest, SamplingConfig
from ..runtime.signals import forget_interrupt, raise_pending
from ..runtime.threads import resolve_threads
from .app import (EXIT_CODES_HELP, Device, Interrupted, QuietFlag, ThreadsOption, WeightsArgument, command, default,
                  given, nonempty, quiet_broken_pipe, say, stderr, stdout_bytes, unescape)

if TYPE_CHECKING:  # sampling loads numpy: only `charnn sample` itself needs it, not `charnn --help`
    from ..generate.output import BufferedOutput, Conversation

SAMPLING, PRIME, OUTPUT = "Sampling", "Prime", "Output"
MAX_PRIME_BYTES = 16 << 20  # a prime past this is no prompt: an endless source (/dev/zero, `yes`), or the wrong file
_SEPARATOR = SampleRequest.separator.decode().encode("unicode_escape").decode()  # shown as typed: \n\n


def _sampling(text: str, name: str | None = None, panel: str = SAMPLING):
    suffix = f" {default(SamplingConfig, name)}" if name else ""
    return typer.Option(help=text + suffix, rich_help_panel=panel, show_default=False)


@command(epilog=EXIT_CODES_HELP)
def sample(
    model: WeightsArgument = None,
    length: Annotated[Optional[int], typer.Option(
        "--length", "-n", help="Characters to generate (bytes with a byte-level model): at most this many with "
        f"--stop. \\[default: {SampleRequest.length}; {SampleRequest.interactive_length} per turn with --interactive]",
        show_default=False)] = None,
    temp: Annotated[Optional[float], typer.Option(
        "--temp", "-t", help="Temperature: below 1 is safer, above 1 wilder, 0 is greedy. "
        f"{default(SamplingConfig, 'temperature')}", rich_help_panel=SAMPLING, show_default=False)] = None,
    top_k: Annotated[Optional[int], _sampling("Sample only from the k most likely characters.")] = None,
    top_p: Annotated[Optional[float], _sampling(
        "Sample only from the most likely characters whose probabilities add up to p (nucleus).")] = None,
    min_p: Annotated[Optional[float], _sampling(
        "Sample only from characters at least p times as likely as the likeliest one.")] = None,
    repetition_penalty: Annotated[Optional[float], _sampling(
        "Above 1, make characters seen in the last --repetition-window characters less likely (transformers' rule: "
        "positive logits divided by it, negative ones multiplied).", "repetition_penalty")] = None,
    repetition_window: Annotated[Optional[int], _sampling(
        "How many recent characters --repetition-penalty looks back over; 0: all of them.",
        "repetition_window")] = None,
    beam: Annotated[Optional[int], _sampling(
        "Beam search with N beams: the most likely continuation instead of a random one (deterministic; streams "
        "as the beams agree; --repetition-penalty applies).")] = None,
    seed: Annotated[Optional[int], _sampling(
        "Random seed: the same seed gives the same text. \\[default: random]")] = None,
    prime: Annotated[Optional[str], typer.Option("--prime", "-p", help="Text to start from; it warms up the state.",
                                                 rich_help_panel=PRIME, show_default=False)] = None,
    prime_file: Annotated[Optional[str], _sampling("Read the prime from a file (- for stdin).", panel=PRIME)] = None,
    drop_unknown: Annotated[bool, typer.Option(
        help="Leave out prime characters the model has never seen instead of failing.", rich_help_panel=PRIME)] = False,
    echo_prime: Annotated[bool, typer.Option("--echo-prime/--no-prime-echo", help="Print the prime before the "
                                             "continuation.", rich_help_panel=PRIME)] = SampleRequest.echo_prime,
    stop: Annotated[Optional[str], _sampling(
        "End a sample where it produces this string, which is not printed (\\n, \\t and \\0 are understood; e.g. "
        "'\\n\\n' for a paragraph).", panel=OUTPUT)] = None,
    num_samples: Annotated[Optional[int], _sampling(
        f"Independent samples, generated together as one batch. \\[default: {SampleRequest.num_samples}]",
        panel=OUTPUT)] = None,
    separator: Annotated[Optional[str], _sampling(
        f"Printed between samples (\\n, \\t and \\0 are understood); one ending in \\0 ends the last sample too "
        f"(records for xargs -0 or read -d ''). \\[default: {_SEPARATOR}]", panel=OUTPUT)] = None,
    interactive: Annotated[bool, typer.Option(
        "--interactive", "-i", help="Type a prime, watch the continuation; the state carries over between turns. "
        "An empty line continues; /reset forgets; /quit or Ctrl-D ends.", rich_help_panel=OUTPUT)] = False,
    quiet: QuietFlag = False,
    device: Annotated[Optional[Device], typer.Option(
        help="Where to compute: the CPU samples with numpy, without PyTorch; cuda, mps and auto (CUDA, then MPS, "
        f"then the CPU) use PyTorch. {default(SampleRequest, 'device')}", show_default=False)] = None,
    threads: ThreadsOption = None,
) -> None:
    """Generate text from a trained model and stream it to stdout."""
    if stop == "":
        raise CharnnError("--stop needs a non-empty string", hint="leave it out to stop only at --length")
    drawing = given(temperature=temp, top_k=top_k, top_p=top_p, min_p=min_p)
    sampling = SamplingConfig(**drawing, **given(repetition_penalty=repetition_penalty,
                                                 repetition_window=repetition_window))
    request = SampleRequest(sampling=sampling, echo_prime=echo_prime, interactive=interactive, **given(
        length=length, interactive_length=length, seed=seed, num_samples=num_samples, beam=beam, device=device,
        stop=_bytes(stop) if stop else None, separator=_bytes(separator) if separator is not None else None))
    request.validate()
    if beam is not None and drawing:
        options = ", ".join(LIMITS[name].option for name in drawing)
        raise CharnnError(f"--beam searches for the most likely text; {options} only apply to sampling")
    if prime is not None and prime_file is not None:
        raise CharnnError("give --prime or --prime-file, not both")
    if interactive and prime_file == "-":
        raise CharnnError("--interactive reads its primes from stdin; --prime-file - cannot share it")
    prime_bytes = _read_prime_file(prime_file) if prime_file is not None else None
    if prime is not None:
        prime_bytes = prime.encode("utf-8", "surrogateescape")
    from ..generate.output import BufferedOutput, Conversation, PipeClosed, encode_prime, write_samples
    from ..generate.sampler import open_sampling_model

    loaded = open_sampling_model(nonempty(model, "MODEL"), request.device, resolve_threads(threads))
    console = stderr()
    if loaded.note:
        say(console, f"charnn: {loaded.note}", quiet=quiet, style="yellow")
    prime_ids = None
    if prime_bytes:
        prime_ids, dropped = encode_prime(loaded.vocab, prime_bytes, drop_unknown)
        if dropped:
            say(console, f"charnn: left out {dropped:,} prime character{'s' * (dropped != 1)} the model does not know",
                quiet=quiet, style="yellow")
    output = BufferedOutput(stdout_bytes())
    try:
        if interactive:
            _interactive(Conversation(loaded.model, loaded.vocab, request, prime_ids), output, console, quiet,
                         drop_unknown)
            return
        write_samples(loaded.model, loaded.vocab, request, output, prime_ids)
        if request.length and output.stream.isatty():
            output.write(b"\n", force_flush=True)
    except PipeClosed:
        pass
    finally:  # on Ctrl-C or SIGTERM too, what was generated reaches stdout
        output.close()
        if output.reader_gone:
            quiet_broken_pipe()


def _bytes(text: str) -> bytes:
    return unescape(text).encode("utf-8", "surrogateescape")


def _read_prime_file(path: str) -> bytes:
    """The prime's bytes, read no further than MAX_PRIME_BYTES (a device or a pipe may never end)."""
    try:
        if path == "-":
            data = _stdin().read(MAX_PRIME_BYTES + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PRIME_BYTES + 1)
    except FileNotFoundError:
        raise CharnnError(f"--prime-file {path}: no such file") from None
    except OSError as err:
        raise CharnnError(f"--prime-file {path}: cannot read ({err.strerror or err})") from None
    if len(data) > MAX_PRIME_BYTES:
        raise CharnnError(f"--prime-file {path}: longer than {MAX_PRIME_BYTES >> 20} MiB; a prime is the start of "
                          "a text, not a corpus", hint="give a shorter file (is the input endless, like yes or /dev/zero?)")
    return data


def _stdin():
    if sys.stdin is None:
        raise CharnnError("stdin is closed: there is nothing to read", hint="give --prime, or pipe text in")
    return sys.stdin.buffer


class _Lines:
    """stdin's lines, read with short waits: a signal that lands just before a blocking read would
    otherwise wait for the next line (Python runs its handler only between steps)."""

    def __init__(self, stream):
        self.fd, self.pending = stream.fileno(), b""

    def readline(self) -> bytes:
        while b"\n" not in self.pending:
            if not self._ready():
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:  # end of input: what is left, then b""
                line, self.pending = self.pending, b""
                return line
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line + b"\n"

    def _ready(self) -> bool:
        raise_pending()  # a signal whose exception was dropped still ends the wait
        try:
            return bool(select.select([self.fd], [], [], 0.2)[0])
        except (OSError, ValueError):  # a descriptor select cannot wait on: block in the read instead
            return True


def _interactive(conversation: Conversation, output: BufferedOutput, console: Console, quiet: bool,
                 drop_unknown: bool) -> None:
    """A prompt on stderr, continuations on stdout; the state carries over from turn to turn."""
    say(console, "charnn interactive: type text and press Enter to continue it; an empty line continues "
                 "further; /reset forgets the context; /quit or Ctrl-D ends.", quiet=quiet, style="dim")
    lines = _Lines(_stdin())
    while True:
        console.print("> ", end="", markup=False, highlight=False, style="bold")
        try:
            line = lines.readline().decode("utf-8", "surrogateescape")
        except KeyboardInterrupt:  # Ctrl-C at the prompt ends the session (in a continuation it cuts that short)
            console.print()
            raise Interrupted from None  # the edge says "charnn: interrupted"
        if not line:  # Ctrl-D
            console.print()
            return
        line = line.rstrip("\n")
        command = line.strip()
        if command in ("/quit", "/exit"):
            return
        if command == "/reset":
            conversation.reset()
            say(console, "(context forgotten)", quiet=quiet, style="dim")
            continue
        if command in ("/help", "/?"):
            say(console, "type text to continue it; empty line: more; /reset; /quit", style="dim")
            continue
        try:
            conversation.read(unescape(line).encode("utf-8", "surrogateescape"), drop_unknown)
        except CharnnError as err:
            say(console, f"charnn: {err}", style="red")
            continue
        conversation.respond(output)
        forget_interrupt()  # a Ctrl-C in the continuation only cut it short
        console.print()
