"""The benchmark behind `charnn bench` and scripts/bench.py: speed against this machine's own ceilings.

Every figure is measured in the same run on the same machine: the fp32 GEMM rate and memory
bandwidth (the ceilings), charnn's training step against a plain reference loop (the
pytorch/examples word_language_model pattern), charnn's sampler against a naive one, and
encoding speed and peak memory on large synthetic corpora. Ratios hold across machines;
absolute figures do not.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn

from .config import ModelConfig, TrainConfig
from .model import CharRNN
from .sampling import SamplingConfig, generate, make_generator
from .train import Trainer, TrainEvents
from .vocab import Vocab

VOCAB_SIZE = 65  # Tiny Shakespeare's


@dataclass(frozen=True)
class TrainCase:
    layers: int
    hidden: int
    batch: int
    seq_len: int

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden} b{self.batch} s{self.seq_len}"


FULL_TRAIN = (TrainCase(2, 128, 32, 64), TrainCase(2, 512, 64, 100), TrainCase(3, 512, 64, 100))
QUICK_TRAIN = FULL_TRAIN[:2]
SAMPLE_MODEL = (2, 512)  # layers, hidden: the sampling rows' model
FULL_STREAMS = (1, 16, 64)
QUICK_STREAMS = (1, 64)
FULL_CORPORA_MB = (100, 1000)
QUICK_CORPORA_MB = (100,)


@dataclass
class BenchOptions:
    quick: bool = False
    device: str = "cpu"
    seconds: float | None = None  # per timed measurement; default depends on quick
    corpora_mb: tuple[int, ...] | None = None  # synthetic corpus sizes; () skips the section
    workdir: Path | None = None  # where the synthetic corpora go (default: a temporary directory)
    corpus_steps: int = 20  # training steps per big-corpus run

    @property
    def measure_seconds(self) -> float:
        return self.seconds if self.seconds is not None else (4.0 if self.quick else 12.0)


@dataclass
class BenchReport:
    machine: dict = field(default_factory=dict)
    ceilings: dict = field(default_factory=dict)
    training: list = field(default_factory=list)
    sampling: list = field(default_factory=list)
    corpora: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"machine": self.machine, "ceilings": self.ceilings, "training": self.training,
                "sampling": self.sampling, "corpora": self.corpora}


# --- ceilings ---------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_rate(fn: Callable[[], None], work: float, device: torch.device, seconds: float) -> float:
    """Work per second of the fastest call of `fn` (after one warm-up call) within `seconds`."""
    fn()
    _sync(device)
    best, deadline = math.inf, time.perf_counter() + seconds
    while time.perf_counter() < deadline or best == math.inf:
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return work / best


def gemm_gflops(device: torch.device, n: int = 2048, seconds: float = 2.0) -> float:
    """fp32 square matrix multiply: the compute ceiling."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    out = torch.empty(n, n, device=device)
    return _best_rate(lambda: torch.mm(a, b, out=out), 2 * n**3 / 1e9, device, seconds)


def numpy_gemm_gflops(n: int = 2048, seconds: float = 2.0) -> float:
    """The same product through numpy's BLAS (OpenBLAS in numpy's wheels), which charnn's one-stream
    sampler uses: on some CPUs it is faster than torch's (MKL on an AMD EPYC), and the ceiling is the
    best the machine does, whichever library does it."""
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
    out = np.empty((n, n), dtype=np.float32)
    return _best_rate(lambda: np.matmul(a, b, out=out), 2 * n**3 / 1e9, torch.device("cpu"), seconds)


def read_bandwidth(device: torch.device, megabytes: float = 512, seconds: float = 2.0) -> float:
    """GB/s reading a buffer of this size again and again (a sum touches every byte once): far larger
    than any cache by default, the memory's rate; at the size of a model's weights, what a cache
    that holds them delivers."""
    x = torch.ones(int(megabytes * (1 << 20)) // 4, device=device)
    return _best_rate(lambda: x.sum(), x.numel() * 4 / 1e9, device, seconds)


def training_flops_per_char(cell: str, layers: int, hidden: int, embed: int, vocab: int) -> float:
    """Matrix-multiply FLOPs per training character: forward, then twice that for the backward."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[cell] * hidden
    forward = sum(2 * gates * ((embed if layer == 0 else hidden) + hidden) for layer in range(layers))
    forward += 2 * hidden * vocab
    return 3.0 * forward


def sampling_bytes_per_step(layers: int, hidden: int, vocab: int) -> int:
    """fp32 weights a one-stream step must read: layer 0's recurrent matrix (its input term is a
    per-character table row), each later layer's input and recurrent matrices, and the output layer."""
    gates = 4 * hidden
    return 4 * (gates * hidden + (layers - 1) * gates * 2 * hidden + hidden * vocab)


def sampling_flops_per_char(layers: int, hidden: int, vocab: int) -> float:
    return 2.0 * sampling_bytes_per_step(layers, hidden, vocab) / 4


# --- training ---------------------------------------------------------------------------------


def synthetic_tokens(n: int, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, n, dtype=np.uint8)


class _Alternating:
    """Times two loops that take turns, one unit of work each (a training step, or a chunk of sampling
    steps), so both see the same machine: on a shared machine, speed drifts by 10-20% over a minute,
    and two loops timed one after the other would compare two different machines. Rates use the
    median unit after a warm-up."""

    def __init__(self, seconds: float, warmup: int = 3, min_units: int = 8):
        self.seconds, self.warmup, self.min_units = seconds, warmup, min_units
        self.durations: tuple[list[float], list[float]] = ([], [])
        self.units = 0
        self.started = time.perf_counter()

    def record(self, ours: float, theirs: float) -> bool:
        """Add one unit of each; True once enough have been timed."""
        self.units += 1
        if self.units > self.warmup:
            self.durations[0].append(ours)
            self.durations[1].append(theirs)
        timed = len(self.durations[0])
        return timed >= self.min_units and time.perf_counter() - self.started >= self.seconds

    def rates(self, work_per_unit: float) -> tuple[float, float]:
        return tuple(work_per_unit / float(np.median(d)) for d in self.durations)


class _TakeTurns(TrainEvents):
    """Inside charnn's own training loop: after each of its steps, one step of the reference loop."""

    def __init__(self, reference_step: Callable[[], None], timer: _Alternating):
        self.reference_step, self.timer = reference_step, timer
        self.mark: float | None = None
        self.finished = False

    def on_step(self, trainer: Trainer) -> None:
        _sync(trainer.device)
        ours_end = time.perf_counter()
        self.reference_step()
        _sync(trainer.device)
        theirs_end = time.perf_counter()
        if self.mark is not None:  # charnn's step: from the end of the last reference step to now
            self.finished = self.timer.record(ours_end - self.mark, theirs_end - ours_end)
        self.mark = theirs_end

    def done(self) -> str | None:
        return "max_time" if self.finished else None


class ReferenceModel(nn.Module):
    """pytorch/examples word_language_model's RNNModel, for an LSTM."""

    def __init__(self, ntoken: int, ninp: int, nhid: int, nlayers: int, dropout: float):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.encoder = nn.Embedding(ntoken, ninp)
        self.rnn = nn.LSTM(ninp, nhid, nlayers, dropout=dropout if nlayers > 1 else 0.0)
        self.decoder = nn.Linear(nhid, ntoken)

    def forward(self, input, hidden):
        emb = self.drop(self.encoder(input))
        output, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(output)), hidden


def _repackage_hidden(h):
    return h.detach() if isinstance(h, torch.Tensor) else tuple(_repackage_hidden(v) for v in h)


class ReferenceLoop:
    """The word_language_model training loop: batchify, get_batch, repackage_hidden, a model with
    nn.LSTM and dropout 0.1, Adam, gradient clipping, and loss.item() every step."""

    def __init__(self, case: TrainCase, tokens: np.ndarray, device: str):
        self.case, self.device = case, torch.device(device)
        self.model = ReferenceModel(VOCAB_SIZE, case.hidden, case.hidden, case.layers, 0.1).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=2e-3)
        self.criterion = nn.CrossEntropyLoss()
        data = torch.from_numpy(tokens.astype(np.int64))
        nbatch = data.size(0) // case.batch
        self.data = data[: nbatch * case.batch].view(case.batch, -1).t().contiguous().to(self.device)  # batchify
        weight = next(self.model.parameters())
        self.hidden = (weight.new_zeros(case.layers, case.batch, case.hidden),
                       weight.new_zeros(case.layers, case.batch, case.hidden))
        self.position, self.total_loss = 0, 0.0
        self.model.train()

    def step(self) -> None:
        case, data = self.case, self.data
        if self.position + 1 + case.seq_len >= data.size(0):
            self.position = 0
        i = self.position
        inputs, targets = data[i : i + case.seq_len], data[i + 1 : i + 1 + case.seq_len].reshape(-1)  # get_batch
        self.position += case.seq_len
        self.model.zero_grad()
        self.hidden = _repackage_hidden(self.hidden)
        output, self.hidden = self.model(inputs, self.hidden)
        loss = self.criterion(output.view(-1, VOCAB_SIZE), targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 0.25)
        self.optimizer.step()
        self.total_loss += loss.item()


def training_rates(case: TrainCase, tokens: np.ndarray, device: str, seconds: float) -> tuple[float, float]:
    """Characters per second of charnn's Trainer (dropout 0.1, AdamW, clipping, schedule, logging)
    and of the reference loop, taking turns step by step on the same data."""
    torch.manual_seed(0)
    reference = ReferenceLoop(case, tokens, device)
    timer = _Alternating(seconds)
    turns = _TakeTurns(reference.step, timer)
    model_config = ModelConfig(vocab_size=VOCAB_SIZE, num_layers=case.layers, hidden_size=case.hidden,
                               embed_size=case.hidden, dropout=0.1)
    config = TrainConfig(batch_size=case.batch, seq_len=case.seq_len, eval_every=10**9, save_every_seconds=None,
                         max_steps=10**9, device=device)
    vocab = Vocab(mode="char", chars="".join(chr(33 + i) for i in range(VOCAB_SIZE)))
    with tempfile.TemporaryDirectory(prefix="charnn-bench-") as run_dir:
        trainer = Trainer(model_config, config, vocab, tokens, tokens[: case.seq_len * 4], run_dir,
                          events=turns, should_stop=turns.done)
        trainer.run()
    return timer.rates(case.batch * case.seq_len)


def bench_training(cases, device: str, seconds: float, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for case in cases:
        tokens = synthetic_tokens(max(2_000_000, case.batch * case.seq_len * 40))
        log(f"training {case.name}")
        ours, reference = training_rates(case, tokens, device, seconds)
        flops = training_flops_per_char("lstm", case.layers, case.hidden, case.hidden, VOCAB_SIZE)
        rows.append({
            "config": case.name, "device": device,
            "chars_per_sec": round(ours, 1), "reference_chars_per_sec": round(reference, 1),
            "ratio": round(ours / reference, 3),
            "gflops": round(ours * flops / 1e9, 1),
            "reference_gflops": round(reference * flops / 1e9, 1),
        })
    return rows


# --- sampling ---------------------------------------------------------------------------------

# Steps each sampler runs per turn. Sampling runs for thousands of characters, and after the other
# loop's turn the first steps refill the cache and wake threads (0.5-1.4 ms each instead of 0.3 for one
# stream): 200 steps make them as small a part of a turn as they are of real use (50 measured 20% low).
SAMPLING_CHUNK = 200
# Uncounted pause between turns: torch's OpenMP threads and numpy's OpenBLAS threads (charnn's one-stream
# sampler) spin for a while after work, and a sampler timed right after the other would share the
# cores with them (first steps of a turn measured at 12-37 ms instead of 0.3 ms without the pause).
SAMPLING_PAUSE = 0.3


def naive_sampler(model: CharRNN, streams: int) -> Iterator[None]:
    """nn.LSTM on a length-1 input, softmax, multinomial and .item() (or .tolist()) every step."""
    device = model.head.weight.device
    generator = make_generator(0, device)
    ids = torch.zeros(1, streams, dtype=torch.long, device=device)
    hidden = None
    while True:
        with torch.inference_mode():
            logits, hidden = model(ids, hidden)
            probs = torch.softmax(logits[0] / 0.8, dim=-1)
            ids = torch.multinomial(probs, 1, generator=generator).view(1, streams)
        ids.item() if streams == 1 else ids.tolist()
        yield


def charnn_sampler(model: CharRNN, streams: int) -> Iterator[None]:
    """charnn's `generate`, consumed the way `charnn sample` consumes it (ids to the host every step)."""
    for ids in generate(model, [0], 10**12, SamplingConfig(temperature=0.8), num_samples=streams, seed=0):
        ids.tolist()
        yield


def sampling_rates(model: CharRNN, streams: int, seconds: float) -> tuple[float, float]:
    """Characters per second of charnn's sampler and the naive one, taking turns a chunk at a time."""
    ours, naive = charnn_sampler(model, streams), naive_sampler(model, streams)
    device = model.head.weight.device
    timer = _Alternating(seconds, warmup=1, min_units=5)
    while True:
        durations = []
        for sampler in (ours, naive):
            time.sleep(SAMPLING_PAUSE)
            start = time.perf_counter()
            for _ in range(SAMPLING_CHUNK):
                next(sampler)
            _sync(device)
            durations.append(time.perf_counter() - start)
        if timer.record(*durations):
            return timer.rates(SAMPLING_CHUNK * streams)


def bench_sampling(streams_list, device: str, seconds: float,
                   log: Callable[[str], None]) -> list[dict]:
    layers, hidden = SAMPLE_MODEL
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=VOCAB_SIZE, num_layers=layers, hidden_size=hidden,
                                embed_size=hidden)).to(device).eval()
    step_bytes = sampling_bytes_per_step(layers, hidden, VOCAB_SIZE)
    flops = sampling_flops_per_char(layers, hidden, VOCAB_SIZE)
    rows = []
    for streams in streams_list:
        log(f"sampling {streams} stream(s)")
        ours, naive = sampling_rates(model, streams, seconds)
        row = {"model": f"{layers}x{hidden}", "streams": streams, "device": device,
               "chars_per_sec": round(ours, 1), "naive_chars_per_sec": round(naive, 1),
               "ratio": round(ours / naive, 2), "gflops": round(ours * flops / 1e9, 2)}
        if streams == 1:  # one stream reads every weight once per step: bandwidth-bound
            row["gb_per_sec"] = round(ours * step_bytes / 1e9, 2)
        rows.append(row)
    return rows


# --- big corpora ------------------------------------------------------------------------------


def write_synthetic_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    """ASCII lines of random words over a 65-character alphabet, `megabytes` MB, written in chunks."""
    rng = np.random.default_rng(seed)
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'-\n&3$\t", dtype=np.uint8)
    remaining = megabytes * 1_000_000
    with open(path, "wb") as f:
        while remaining > 0:
            n = min(remaining, 1 << 24)
            f.write(alphabet[rng.integers(0, len(alphabet), n)].tobytes())
            remaining -= n


# Runs `charnn` and reports its own peak memory. VmHWM is the peak of this program's memory alone:
# the parent's pages, which a forked child holds until it execs, count in getrusage's figure.
_MEASURED_CHILD = """
import resource, sys
from charnn.cli import main
code = main(sys.argv[1:])
try:
    with open("/proc/self/status") as f:
        peak_kb = int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
except (OSError, StopIteration):
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
sys.stderr.write(f"\\ncharnn-bench-peak-kb {peak_kb}\\n")
sys.exit(code)
"""


def _run_measured(args: list[str], env: dict) -> tuple[float, float]:
    """(seconds, peak resident MB) of `charnn ARGS` in a child process."""
    start = time.perf_counter()
    process = subprocess.run([sys.executable, "-c", _MEASURED_CHILD, *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    stderr = process.stderr.decode("utf-8", "replace")
    if process.returncode != 0:
        raise RuntimeError(f"charnn {' '.join(args)} failed ({process.returncode}): {stderr.strip()[-500:]}")
    peak_kb = int(stderr.rsplit("charnn-bench-peak-kb", 1)[1].split()[0])
    return seconds, peak_kb / 1024


def bench_corpora(sizes_mb, device: str, workdir: Path, log: Callable[[str], None], steps: int = 20) -> list[dict]:
    """Train a default model for a few steps on big synthetic corpora, twice: cold, then from the cache."""
    from .tokens import encode_files  # noqa: PLC0415 (only this section needs it)

    rows = []
    for mb in sizes_mb:
        corpus = workdir / f"synthetic-{mb}mb.txt"
        log(f"writing a {mb} MB corpus")
        write_synthetic_corpus(corpus, mb)
        log(f"encoding {mb} MB")
        start = time.perf_counter()
        encoded = encode_files([str(corpus)], workdir / f"encoded-{mb}.npy", "char")
        encode_seconds = time.perf_counter() - start
        (workdir / f"encoded-{mb}.npy").unlink()
        env = dict(os.environ, CHARNN_RUNS_DIR=str(workdir / "runs"))
        row = {"megabytes": mb, "tokens": encoded.num_tokens,
               "encode_mb_per_sec": round(mb / encode_seconds, 1)}
        for attempt in ("first", "second"):
            log(f"training on {mb} MB ({attempt} start)")
            args = ["train", str(corpus), "--max-steps", str(steps),
                    "--eval-every", str(max(steps // 2, 1)), "--eval-chars", "20000", "--device", device, "--quiet", "--out",
                    str(workdir / "runs" / f"{mb}-{attempt}")]
            seconds, peak_mb = _run_measured(args, env)
            row[f"{attempt}_start_seconds"] = round(seconds, 2)
            row[f"{attempt}_peak_rss_mb"] = round(peak_mb, 1)
        row["peak_rss_mb"] = max(row["first_peak_rss_mb"], row["second_peak_rss_mb"])
        # the token file is memory-mapped: a full epoch may bring all of it into resident memory
        row["token_file_mb"] = round(encoded.num_tokens * encoded.vocab.dtype.itemsize / 2**20, 1)
        rows.append(row)
        corpus.unlink()
    return rows


# --- the whole benchmark -----------------------------------------------------------------------


def add_shares(report: BenchReport, gemm: float, bandwidth: float, cached: float | None = None) -> None:
    """Each speed as a share of its ceiling: GEMM for training and batched sampling, memory bandwidth
    for one stream (which reads every weight once per character), and the read rate of a cache that
    holds the weights, where they fit in one."""
    for row in report.training:
        row["ceiling_share"] = round(row["gflops"] / gemm, 3)
    for row in report.sampling:
        if row["streams"] == 1:
            row["bandwidth_share"] = round(row["gb_per_sec"] / bandwidth, 3)
            if cached is not None:
                row["cached_share"] = round(row["gb_per_sec"] / cached, 3)
        else:
            row["ceiling_share"] = round(row["gflops"] / gemm, 3)


def machine_info(device: torch.device) -> dict:
    info = {"python": sys.version.split()[0], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "device": str(device), "platform": sys.platform}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = lambda message: None) -> BenchReport:
    device = torch.device(options.device)
    seconds = options.measure_seconds
    report = BenchReport(machine=machine_info(device))
    ceiling_seconds = min(seconds, 3.0)
    layers, hidden = SAMPLE_MODEL
    weights_mb = sampling_bytes_per_step(layers, hidden, VOCAB_SIZE) / (1 << 20)

    def ceilings() -> dict:
        found = {"gemm_gflops_torch": gemm_gflops(device, seconds=ceiling_seconds),
                 "read_gb_per_sec": read_bandwidth(device, seconds=ceiling_seconds)}
        if device.type == "cpu":
            found["gemm_gflops_numpy"] = numpy_gemm_gflops(seconds=ceiling_seconds)
            found["cached_read_gb_per_sec"] = read_bandwidth(device, weights_mb, seconds=ceiling_seconds)
        return found

    log("measuring the ceilings")
    first = ceilings()
    report.training = bench_training(QUICK_TRAIN if options.quick else FULL_TRAIN, options.device, seconds, log)
    report.sampling = bench_sampling(QUICK_STREAMS if options.quick else FULL_STREAMS, options.device, seconds, log)
    log("measuring the ceilings again")  # a ceiling is the best the machine did at any point of the run
    best = {key: round(max(value, first[key]), 1) for key, value in ceilings().items()}
    gemm = max(best["gemm_gflops_torch"], best.get("gemm_gflops_numpy", 0.0))
    report.ceilings = {"gemm_gflops": gemm, **best}
    add_shares(report, gemm, best["read_gb_per_sec"], best.get("cached_read_gb_per_sec"))
    sizes = options.corpora_mb
    if sizes is None:
        sizes = QUICK_CORPORA_MB if options.quick else FULL_CORPORA_MB
    if sizes:
        if options.workdir is not None:
            options.workdir.mkdir(parents=True, exist_ok=True)
            report.corpora = bench_corpora(sizes, options.device, options.workdir, log, options.corpus_steps)
        else:
            with tempfile.TemporaryDirectory(prefix="charnn-bench-") as tmp:
                report.corpora = bench_corpora(sizes, options.device, Path(tmp), log, options.corpus_steps)
    return report

