"""The sampling settings: how each character is drawn (`SamplingConfig`), what `charnn sample` prints
(`SampleRequest`), their defaults, and the limits of every value, declared once (`LIMITS`).

The names follow transformers' generation config. Every value is checked by `check`, here and nowhere
else: a value out of its range is a `SettingError`, a CharnnError worded as the command line names the
setting (`--temp must be >= 0 (0: greedy), not -1.0`) that also carries the completions API's field
(`temperature`), so `charnn serve` words the same rule for its clients as OpenAI does, naming `param`.
A server narrows a limit with its own (`--max-tokens`, `--max-n`), never widens one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

from ..config import DEVICES, MAX_SEED
from ..errors import CharnnError
from ..printable import brief

PENALTY_RANGE = (1e-6, 1e6)  # a float32 logit divided or multiplied by these stays finite (a denormal: inf, NaN)


@dataclass(frozen=True)
class Limit:
    """A setting's range (bounds inclusive unless `above` says otherwise), and what the user calls it."""

    option: str  # the command line's option
    param: str | None  # the completions API's field (None: the API has none)
    whole: bool  # a whole number, else any finite number
    low: float | None = None
    high: float | None = None
    above: bool = False  # the value must be strictly above `low`
    note: str = ""  # what the edge values mean, e.g. "(0: greedy)"


LIMITS = {
    "temperature": Limit("--temp", "temperature", False, 0, note="(0: greedy)"),
    "top_k": Limit("--top-k", "top_k", True, 1),
    "top_p": Limit("--top-p", "top_p", False, 0, 1, above=True),
    "min_p": Limit("--min-p", "min_p", False, 0, 1),
    "repetition_penalty": Limit("--repetition-penalty", "repetition_penalty", False, *PENALTY_RANGE,
                                note="(1: off; 1.1 to 1.5 discourages repeats)"),
    "repetition_window": Limit("--repetition-window", None, True, 0, note="(0: all of them)"),
    "seed": Limit("--seed", "seed", True, 0, MAX_SEED),
    "length": Limit("--length", "max_tokens", True, 0),
    "num_samples": Limit("--num-samples", "n", True, 1),
    "beam": Limit("--beam", None, True, 1),
}


class SettingError(CharnnError):
    """A setting's value out of its limits: worded for the command line; `api_message` and `param` for the API."""

    def __init__(self, name: str, value, rule: str, wrong_type: bool = False):
        self.setting, self.value, self.rule, self.wrong_type = name, value, rule, wrong_type
        self.param = LIMITS[name].param
        super().__init__(f"{LIMITS[name].option} {rule}, not {brief(value)}")

    @property
    def api_message(self) -> str:
        return f"{self.param} {self.rule}, not {brief(self.value)}"


def _finite(limit: Limit, value) -> bool:
    """A whole number of any size compares exactly; any other number must be a finite float."""
    try:
        return limit.whole or math.isfinite(value)
    except OverflowError:  # a whole number past float's range, given for a number
        return False


def _rule(limit: Limit, low, high) -> str:
    """What a good value is, in words: 'must be in (0, 1]', 'must be a whole number from 1 to 16'."""
    if limit.whole:
        words = f"must be a whole number from {low} to {high}" if high is not None else f"must be at least {low}"
    elif high is not None:
        words = f"must be in {'(' if limit.above else '['}{low:g}, {high:g}]"
    else:
        words = f"must be {'>' if limit.above else '>='} {low:g}"
    return f"{words} {limit.note}".rstrip()


def _narrowed(bound, server, pick):
    return server if bound is None else bound if server is None else pick(bound, server)


def check(name: str, value, low: float | None = None, high: float | None = None):
    """`value` of the setting `name`, checked against its limits, narrowed by `low` and `high` (a server's);
    a SettingError otherwise. None passes: the setting is not given."""
    if value is None:
        return None
    limit = LIMITS[name]
    low, high = _narrowed(limit.low, low, max), _narrowed(limit.high, high, min)
    if isinstance(value, bool) or not isinstance(value, int if limit.whole else (int, float)):
        raise SettingError(name, value, f"must be {'a whole number' if limit.whole else 'a number'}", wrong_type=True)
    above_low = value > low if limit.above else value >= low
    if not (_finite(limit, value) and above_low and (high is None or value <= high)):
        raise SettingError(name, value, _rule(limit, low, high))
    return value


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each character; the names follow transformers' generation config."""

    temperature: float = 1.0  # 1 samples the model's own distribution; 0 is greedy argmax
    top_k: int | None = None  # keep only the k most likely characters
    top_p: float | None = None  # keep the smallest set whose probability reaches p (nucleus)
    min_p: float | None = None  # keep characters at least min_p times as likely as the likeliest
    repetition_penalty: float = 1.0  # > 1 discourages characters seen in the last repetition_window
    # transformers penalises every token of the context; on characters that soon covers the whole
    # alphabet, so only the recent ones count (0 or None: all of them)
    repetition_window: int | None = 64

    def validate(self, vocab_size: int | None = None) -> SamplingConfig:
        """Check every value; top_k above the vocabulary size is clamped to it."""
        for name in ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "repetition_window"):
            check(name, getattr(self, name))
        if self.top_k is not None and vocab_size is not None and self.top_k > vocab_size:
            return replace(self, top_k=vocab_size)
        return self


@dataclass(frozen=True)
class SampleRequest:
    """What `charnn sample` prints: how much, from which prime, and how samples end and are joined."""

    length: int = 1000  # characters per sample (bytes with a byte-level model); the most, with a stop string
    interactive_length: int = 300  # per turn of --interactive
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    seed: int | None = None  # None: a fresh random seed
    echo_prime: bool = True
    stop: bytes = b""  # end a sample where it produces this (not printed)
    num_samples: int = 1
    separator: bytes = b"\n\n"
    beam: int | None = None  # beam search with this many beams instead of sampling
    interactive: bool = False  # turns of a conversation instead of samples
    # the CPU unless asked: it samples with numpy, without PyTorch's seconds of importing, and one stream
    # is a chain of small products, not the big batches a GPU is built for
    device: str = "cpu"

    def validate(self) -> SampleRequest:
        for name, value in (("seed", self.seed), ("length", self.length), ("length", self.interactive_length),
                            ("num_samples", self.num_samples), ("beam", self.beam)):
            check(name, value)
        if self.interactive and self.num_samples != 1:
            raise CharnnError("--interactive continues one text: it does not combine with --num-samples")
        if self.beam is not None and (self.num_samples != 1 or self.interactive):
            raise CharnnError("--beam gives one continuation: it does not combine with --num-samples or --interactive")
        if self.device not in DEVICES:
            raise CharnnError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        self.sampling.validate()
        return self
