"""Configuration, and every default: what a model is (ModelConfig), how it is trained (TrainConfig), what
`charnn serve` listens on and holds requests to (ServeConfig), what `charnn bench` measures (BenchOptions).
How each character is drawn and what `charnn sample` prints are the sampling settings' own, with their
limits (`charnn.generate.settings`).

Plain dataclasses that round-trip through JSON and checkpoints as dicts; `validate()` turns every
bad value into a CharnnError that names the option. The command line passes only the options a
user gave, so each default lives here and nowhere else.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from .errors import CharnnError
from .printable import brief

CELLS = ("lstm", "gru", "rnn")
MAX_LAYERS = 64  # deeper stacks are no character model; building one takes minutes
MAX_SEED = 2**63 - 1  # what every random number generator charnn seeds accepts
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("cosine", "plateau", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # charnn.model.precision's; here so the config needs no PyTorch
# --size: "auto" chooses the shape from the corpus, the budget and the device (charnn.plan.sizing); the
# others are fixed shapes, "small" being exactly ModelConfig's and TrainConfig's defaults
SIZES = ("auto", "tiny", "small", "medium", "large")
DEFAULT_SIZE = "auto"


# the command-line flag of a config field, where it is not the field's name in kebab case
_FLAGS = {"num_layers": "--layers", "reset_ids": "--reset-on", "save_every_steps": "--save-every",
          "save_every_seconds": "--save-every"}


def flag(name: str) -> str:
    """The option that sets a config field: 'num_layers' -> '--layers', 'seq_len' -> '--seq-len'."""
    return _FLAGS.get(name, "--" + name.replace("_", "-"))


def _require(ok: bool, option: str, message: str) -> None:
    if not ok:
        raise CharnnError(f"{option} {message}")


def _require_types(config, types: dict) -> None:
    """Each field of a type it may have (a checkpoint or JSON may hold anything); bool is not a number."""
    for name, kind in types.items():
        value = getattr(config, name)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
            raise CharnnError(f"{flag(name)} must be {_KIND_NAMES.get(kind, 'a number')}, not {brief(value)}")


_KIND_NAMES = {int: "a whole number", bool: "true or false", str: "text", (int, type(None)): "a whole number"}


def _require_seed(seed) -> None:
    ok = isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed <= MAX_SEED
    _require(ok, "--seed", f"must be a whole number from 0 to {MAX_SEED}, not {seed}")


def _known_fields(cls, data: dict) -> dict:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    cell: str = "lstm"
    num_layers: int = 2
    hidden_size: int = 256
    embed_size: int | None = None  # None: the hidden size
    dropout: float = 0.1  # between layers, on the embedding and before the output layer
    tie_weights: bool = False  # share embedding and output matrices; needs embed_size == hidden_size
    # --reset-on: the delimiter's token ids; its last character is read from a zero state, so every
    # record after a delimiter is modelled on its own (training, evaluation and sampling alike)
    reset_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.embed_size is None:
            object.__setattr__(self, "embed_size", self.hidden_size)

    def validate(self) -> ModelConfig:
        _require_types(self, {"vocab_size": int, "num_layers": int, "hidden_size": int, "embed_size": int,
                              "dropout": (int, float), "tie_weights": bool, "cell": str})
        _require(self.vocab_size >= 1, "vocab_size", "must be at least 1")
        _require(self.num_layers <= MAX_LAYERS, "--layers", f"must be at most {MAX_LAYERS}, not {self.num_layers}")
        _require(self.cell in CELLS, "--cell", f"must be one of {', '.join(CELLS)}, not {self.cell!r}")
        _require(self.num_layers >= 1, "--layers", f"must be at least 1, not {self.num_layers}")
        _require(self.hidden_size >= 1, "--hidden-size", f"must be at least 1, not {self.hidden_size}")
        _require(self.embed_size >= 1, "--embed-size", f"must be at least 1, not {self.embed_size}")
        _require(0.0 <= self.dropout < 1.0, "--dropout", f"must be in [0, 1), not {self.dropout}")
        _require(all(0 <= i < self.vocab_size for i in self.reset_ids), "--reset-on",
                 "must consist of characters in the vocabulary")
        if self.tie_weights and self.embed_size != self.hidden_size:
            raise CharnnError(
                f"--tie-weights needs --embed-size equal to --hidden-size "
                f"(got {self.embed_size} and {self.hidden_size})"
            )
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = _known_fields(cls, data)
        if "reset_ids" in known:  # a list in JSON
            known["reset_ids"] = tuple(int(i) for i in known["reset_ids"])
        return cls(**known)


@dataclass(frozen=True)
class TrainConfig:
    # data
    batch_size: int = 8  # contiguous streams side by side; few and small is fastest per minute on a CPU
    seq_len: int = 128  # truncated-BPTT window; state still flows across windows
    val_frac: float = 0.1  # last 10% is validation, as nanoGPT's shakespeare_char
    carry_state: bool = True  # False resets the hidden state every window (an ablation)
    # optimisation
    lr: float = 2e-3
    weight_decay: float = 0.01  # on matrices only, never on biases
    grad_clip: float = 1.0  # global gradient-norm clip; 0 turns it off
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.1  # cosine ends at lr * min_lr_ratio
    # stopping: whichever comes first; with none given, `epochs` applies
    epochs: float | None = None
    max_steps: int | None = None
    max_time: float | None = None  # seconds
    # cadence
    eval_every: int = 500  # steps; also at the end
    patience: int | None = None  # stop after this many evaluations in a row without a new best
    sample_every: int | None = None  # steps; a short sample is handed to the events (printed on stderr)
    sample_chars: int = 200
    eval_chars: int | None = 1_000_000  # validation characters scored per evaluation (None: all)
    save_every_steps: int | None = None  # besides every evaluation and the end
    save_every_seconds: float | None = 600.0
    keep: int = 0  # earlier last.pt checkpoints kept in checkpoints/, oldest removed first
    log_every: int = 50
    # reproducibility and hardware
    seed: int = 1337
    device: str = "auto"
    # auto: bf16 where the device has it natively and it trains this model 1.15x as fast (charnn.model.precision);
    # a run records the precision it chose, and keeps it when resumed
    precision: str = "auto"

    DEFAULT_EPOCHS = 10.0

    def validate(self) -> TrainConfig:
        number, maybe_int, maybe_number = (int, float), (int, type(None)), (int, float, type(None))
        _require_types(self, {
            "batch_size": int, "seq_len": int, "warmup_steps": int, "eval_every": int, "log_every": int, "keep": int,
            "sample_chars": int, "val_frac": number, "lr": number, "weight_decay": number, "grad_clip": number,
            "min_lr_ratio": number, "max_steps": maybe_int, "patience": maybe_int, "sample_every": maybe_int,
            "save_every_steps": maybe_int, "eval_chars": maybe_int, "epochs": maybe_number, "max_time": maybe_number,
            "save_every_seconds": maybe_number, "carry_state": bool, "schedule": str, "device": str,
            "precision": str})
        for option, value in (("--batch-size", self.batch_size), ("--seq-len", self.seq_len),
                              ("--eval-every", self.eval_every), ("--log-every", self.log_every)):
            _require(value >= 1, option, f"must be at least 1, not {value}")
        _require(0.0 < self.val_frac < 1.0, "--val-frac", f"must be in (0, 1), not {self.val_frac}")
        _require(math.isfinite(self.lr) and self.lr > 0, "--lr", f"must be positive, not {self.lr}")
        _require(self.weight_decay >= 0, "--weight-decay", f"must be >= 0, not {self.weight_decay}")
        _require(self.grad_clip >= 0, "--grad-clip", f"must be >= 0 (0 turns clipping off), not {self.grad_clip}")
        _require(self.schedule in SCHEDULES, "--schedule",
                 f"must be one of {', '.join(SCHEDULES)}, not {self.schedule!r}")
        _require(self.warmup_steps >= 0, "--warmup-steps", f"must be >= 0, not {self.warmup_steps}")
        _require(0.0 <= self.min_lr_ratio <= 1.0, "--min-lr-ratio", f"must be in [0, 1], not {self.min_lr_ratio}")
        if self.epochs is not None:
            _require(self.epochs > 0, "--epochs", f"must be positive, not {self.epochs}")
        if self.max_steps is not None:
            _require(self.max_steps >= 1, "--max-steps", f"must be at least 1, not {self.max_steps}")
        if self.max_time is not None:
            _require(self.max_time > 0, "--max-time", "must be positive")
        if self.save_every_steps is not None:
            _require(self.save_every_steps >= 1, "--save-every", "must be positive")
        if self.save_every_seconds is not None:
            _require(self.save_every_seconds > 0, "--save-every", "must be positive")
        if self.eval_chars is not None:
            _require(self.eval_chars >= 2, "--eval-chars", f"must be at least 2, not {self.eval_chars}")
        _require(self.keep >= 0, "--keep", f"must be >= 0, not {self.keep}")
        for option, value in (("--patience", self.patience), ("--sample-every", self.sample_every)):
            if value is not None:
                _require(value >= 1, option, f"must be at least 1, not {value}")
        _require(self.sample_chars >= 1, "sample_chars", f"must be at least 1, not {self.sample_chars}")
        _require(self.device in DEVICES, "--device", f"must be one of {', '.join(DEVICES)}, not {self.device!r}")
        _require(self.precision in PRECISIONS, "--precision",
                 f"must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        _require_seed(self.seed)
        return self

    @property
    def stop_epochs(self) -> float | None:
        """The epoch limit in force: the given one, or the default when no stop condition is set."""
        if self.epochs is None and self.max_steps is None and self.max_time is None:
            return self.DEFAULT_EPOCHS
        return self.epochs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return cls(**_known_fields(cls, data))

    def limit_reached(self, step: int, elapsed: float | None, epochs: float | None, rounded: bool = False) -> str | None:
        """Which limit a run at this point has reached ('max_steps', 'max_time', 'epochs'), if any. `rounded`:
        the figures were read back from metrics.jsonl, which rounds seconds to 1 ms and epochs to 1e-4."""
        time_slack, epoch_slack = (1e-3, 1e-4) if rounded else (0.0, 1e-9)
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.max_time is not None and elapsed is not None and elapsed >= self.max_time - time_slack:
            return "max_time"
        if self.stop_epochs is not None and epochs is not None and epochs >= self.stop_epochs - epoch_slack:
            return "epochs"
        return None


LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_WORKERS = 256  # --workers: a typo of many digits must not fork that many processes


@dataclass(frozen=True)
class ServeConfig:
    """What `charnn serve` listens on and the limits it holds every request to."""

    host: str = "127.0.0.1"  # loopback: any other address needs an API key
    port: int = 8000
    api_key: str | None = None  # when set, every /v1 request must carry it as a bearer token
    max_prompt_chars: int = 4096  # a prompt is read in slices between steps, but a long one still costs
    max_tokens: int = 4096  # the most characters one request may ask for (per choice)
    default_max_tokens: int = 256  # when a request gives no max_tokens (OpenAI's 16 is a word or two here)
    max_n: int = 16  # choices per request
    max_concurrent: int = 64  # requests in flight; more get 429 with Retry-After
    max_body_bytes: int = 65536  # a 4096-character prompt escaped as JSON fits with room to spare
    grace_seconds: float = 10.0  # on SIGTERM or Ctrl-C, how long streams in flight may take to finish
    allow_hosts: tuple[str, ...] = ()  # Host names besides loopback's ("*": any); DNS rebinding needs another
    cors_origins: tuple[str, ...] = ()  # web origins whose pages may call the API; others are refused
    header_timeout: float = 10.0  # seconds for a request's headers to arrive, from its first byte
    body_timeout: float = 30.0  # seconds for its body, once the headers are in
    write_timeout: float = 30.0  # a client that reads nothing for this long is dropped (its text waits paused)
    max_connections: int = 1024  # open at once (fewer if the file limit is lower); more are refused at once
    threads: str | None = None  # --threads: a count or "auto"; None: CHARNN_THREADS, OMP_NUM_THREADS or auto
    chat_template: Path | None = None  # a JSON file (charnn.serve.chat); None: the default template
    # processes serving the port, and as many engines sampling for them: a count, or "auto": one per core's
    # worth of threads (charnn.serve.workers.worker_count), since one process's GIL holds it to about a core
    workers: str = "auto"

    def validate(self) -> ServeConfig:
        _require(0 <= self.port <= 65535, "--port", f"must be in [0, 65535] (0: any free port), not {self.port}")
        for name in ("max_prompt_chars", "max_tokens", "default_max_tokens", "max_n", "max_concurrent",
                     "max_body_bytes", "max_connections"):
            value = getattr(self, name)
            _require(value >= 1, flag(name), f"must be at least 1, not {value}")
        workers = str(self.workers).strip().lower()
        _require(workers == "auto" or (workers.isdigit() and 1 <= int(workers) <= MAX_WORKERS), "--workers",
                 f"must be auto or a whole number from 1 to {MAX_WORKERS}, not {self.workers!r}")
        _require(self.default_max_tokens <= self.max_tokens, "--default-max-tokens",
                 f"must be at most --max-tokens ({self.max_tokens}), not {self.default_max_tokens}")
        _require(math.isfinite(self.grace_seconds) and self.grace_seconds >= 0, "--grace-seconds",
                 f"must be >= 0, not {self.grace_seconds}")
        for name in ("header_timeout", "body_timeout", "write_timeout"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value > 0, flag(name), f"must be a positive number of seconds, not {value}")
        for origin in self.cors_origins:
            _require(re.fullmatch(r"https?://[^/\s]+", origin) is not None, "--cors-origin",
                     f"must be a web origin like http://localhost:3000 (scheme and host, no path), not {origin!r}")
        if self.api_key is not None:
            _require(len(self.api_key) >= 1, "--api-key", "must not be empty")
            _require(self.api_key == self.api_key.strip(), "--api-key", "must not begin or end with white space "
                     "(HTTP drops it from a header, so no client could send that key)")
        elif self.host not in LOOPBACK_HOSTS:
            raise CharnnError(f"--host {self.host} lets other machines in: it needs an API key",
                              hint="give --api-key or set CHARNN_API_KEY; clients send it as 'Authorization: Bearer KEY'")
        return self


@dataclass
class BenchOptions:
    """What `charnn bench` measures, and for how long."""

    quick: bool = False
    device: str = "cpu"
    seconds: float | None = None  # per timed measurement; default depends on quick
    corpora_mb: tuple[int, ...] | None = None  # synthetic corpus sizes; () skips the section
    workdir: Path | None = None  # where the synthetic corpora go (default: a temporary directory)
    corpus_steps: int = 20  # training steps per big-corpus run
    startup_rounds: int = 10  # whole processes timed per startup command (the median of these); 0 skips them

    @property
    def measure_seconds(self) -> float:
        return self.seconds if self.seconds is not None else (4.0 if self.quick else 12.0)


_UNIT_SECONDS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str, option: str = "--max-time") -> float:
    """'90' or '90s' -> 90.0, '10m' -> 600.0, '2h' -> 7200.0, '1.5d' -> 129600.0; also '1h30m'."""
    parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)", text.strip(), re.IGNORECASE)
    joined = "".join(n + u for n, u in parts)
    if not parts or joined.lower() != re.sub(r"\s+", "", text).lower() or (
        len(parts) > 1 and any(u == "" for _, u in parts)
    ):
        raise CharnnError(f"{option} must be a duration like 90s, 10m, 2h or 1h30m, not {text!r}")
    seconds = sum(float(n) * _UNIT_SECONDS[u.lower()] for n, u in parts)
    if seconds <= 0:
        raise CharnnError(f"{option} must be a positive duration, not {text!r}")
    return seconds


def parse_save_every(text: str) -> tuple[int | None, float | None]:
    """'1000' -> every 1000 steps; '10m' -> every 10 minutes; '0' or 'off' -> only at evaluations."""
    text = text.strip().lower()
    if text in ("0", "off", "none"):
        return None, None
    if text.isdigit():
        return int(text), None
    return None, parse_duration(text, option="--save-every")
