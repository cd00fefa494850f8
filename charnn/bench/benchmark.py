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
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..config import BenchOptions, ModelConfig, TrainConfig
from ..data.batches import TrainData
from ..data.vocab import Vocab
from ..generate.sampler import generate
from ..generate.settings import SamplingConfig
from ..model.network import CharRNN
from ..model.precision import mixed_candidate
from ..model.spec import FLOAT, forward_flops_per_char, step_weight_bytes
from ..train.events import TrainEvents, TrainSnapshot
from ..train.trainer import Trainer, TrainHooks
from .baselines import VOCAB_SIZE, Alternating, ReferenceLoop, naive_sampler
from .corpora import bench_corpora
from .startup import bench_startup


@dataclass(frozen=True)
class TrainCase:
    layers: int
    hidden: int
    batch: int
    seq_len: int

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.hidden} b{self.batch} s{self.seq_len}"

    def model_config(self) -> ModelConfig:
        return ModelConfig(vocab_size=VOCAB_SIZE, num_layers=self.layers, hidden_size=self.hidden, dropout=0.1)


FULL_TRAIN = (TrainCase(2, 128, 32, 64), TrainCase(2, 512, 64, 100), TrainCase(3, 512, 64, 100))
QUICK_TRAIN = FULL_TRAIN[:2]
SAMPLE_MODEL = (2, 512)  # layers, hidden: the sampling rows' model
FULL_STREAMS = (1, 16, 64)
QUICK_STREAMS = (1, 64)
FULL_CORPORA_MB = (100, 1000)
QUICK_CORPORA_MB = (100,)


@dataclass
class BenchReport:
    machine: dict = field(default_factory=dict)
    ceilings: dict = field(default_factory=dict)
    training: list = field(default_factory=list)
    sampling: list = field(default_factory=list)
    corpora: list = field(default_factory=list)
    startup: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"machine": self.machine, "ceilings": self.ceilings, "training": self.training,
                "sampling": self.sampling, "corpora": self.corpora, "startup": self.startup}


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


# --- training ---------------------------------------------------------------------------------


def synthetic_tokens(n: int, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab_size, n, dtype=np.uint8)


class _TakeTurns(TrainEvents):
    """Inside charnn's own training loop: after each of its steps, one step of the reference loop."""

    def __init__(self, reference_step: Callable[[], None], timer: Alternating):
        self.reference_step, self.timer = reference_step, timer
        self.mark: float | None = None
        self.finished = False

    def on_step(self, snapshot: TrainSnapshot) -> None:
        device = torch.device(snapshot.device)
        _sync(device)
        ours_end = time.perf_counter()
        self.reference_step()
        _sync(device)
        theirs_end = time.perf_counter()
        if self.mark is not None:  # charnn's step: from the end of the last reference step to now
            self.finished = self.timer.record(ours_end - self.mark, theirs_end - ours_end)
        self.mark = theirs_end

    def done(self) -> str | None:
        return "max_time" if self.finished else None


def training_rates(case: TrainCase, tokens: np.ndarray, device: str, seconds: float,
                   precision: str = "fp32") -> tuple[float, float]:
    """Characters per second of charnn's Trainer (dropout 0.1, AdamW, clipping, schedule, logging) in
    `precision` and of the reference loop (float32), taking turns step by step on the same data."""
    torch.manual_seed(0)
    reference = ReferenceLoop(case, tokens, device)
    timer = Alternating(seconds)
    turns = _TakeTurns(reference.step, timer)
    model_config = case.model_config()
    config = TrainConfig(batch_size=case.batch, seq_len=case.seq_len, eval_every=10**9, save_every_seconds=None,
                         max_steps=10**9, device=device, precision=precision)
    vocab = Vocab(mode="char", chars="".join(chr(33 + i) for i in range(VOCAB_SIZE)))
    with tempfile.TemporaryDirectory(prefix="charnn-bench-") as run_dir:
        data = TrainData(vocab, tokens, tokens[: case.seq_len * 4])
        trainer = Trainer(model_config, config, data, run_dir, TrainHooks(events=turns, should_stop=turns.done))
        trainer.run()
    return timer.rates(case.batch * case.seq_len)


def bench_training(cases, device: str, seconds: float, log: Callable[[str], None]) -> list[dict]:
    rows = []
    for case in cases:
        tokens = synthetic_tokens(max(2_000_000, case.batch * case.seq_len * 40))
        log(f"training {case.name}")
        ours, reference = training_rates(case, tokens, device, seconds)
        flops = 3 * forward_flops_per_char(case.model_config())  # the backward pass costs twice the forward
        rows.append({
            "config": case.name, "device": device,
            "chars_per_sec": round(ours, 1), "reference_chars_per_sec": round(reference, 1),
            "ratio": round(ours / reference, 3),
            "gflops": round(ours * flops / 1e9, 1),
            "reference_gflops": round(reference * flops / 1e9, 1),
        })
        mixed = mixed_candidate(torch.device(device))
        if mixed is not None:  # side by side where the device has a mixed precision natively
            log(f"training {case.name} in {mixed}")
            low, _ = training_rates(case, tokens, device, seconds, precision=mixed)
            rows[-1].update({"mixed_precision": mixed, "mixed_chars_per_sec": round(low, 1),
                             "mixed_gain": round(low / ours, 3)})
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


def sampling_model() -> ModelConfig:
    """The model of the sampling rows (SAMPLE_MODEL: layers, hidden)."""
    layers, hidden = SAMPLE_MODEL
    return ModelConfig(vocab_size=VOCAB_SIZE, num_layers=layers, hidden_size=hidden)


def charnn_sampler(model: CharRNN, streams: int) -> Iterator[None]:
    """charnn's `generate`, consumed the way `charnn sample` consumes it (ids to the host every step)."""
    for ids in generate(model, [0], 10**12, SamplingConfig(temperature=0.8), num_samples=streams, seed=0):
        ids.tolist()
        yield


def sampling_rates(model: CharRNN, streams: int, seconds: float) -> tuple[float, float]:
    """Characters per second of charnn's sampler and the naive one, taking turns a chunk at a time."""
    ours, naive = charnn_sampler(model, streams), naive_sampler(model, streams)
    device = model.head.weight.device
    timer = Alternating(seconds, warmup=1, min_units=5)
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
    model = CharRNN(sampling_model()).to(device).eval()
    step_bytes = step_weight_bytes(model.config)
    flops = 2 * step_bytes / FLOAT  # a multiply and an add for every weight read
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
    weights_mb = step_weight_bytes(sampling_model()) / (1 << 20)

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
        with _workdir(options) as workdir:
            report.corpora = bench_corpora(sizes, options.device, workdir, log, options.corpus_steps)
    if options.startup_rounds:
        with _workdir(options, "startup") as workdir:
            report.startup = bench_startup(workdir, options.startup_rounds, log=log)
    return report


@contextmanager
def _workdir(options: BenchOptions, name: str = "") -> Iterator[Path]:
    """options.workdir (or a directory in it), else a temporary directory removed afterwards."""
    if options.workdir is not None:
        path = options.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="charnn-bench-") as tmp:
        yield Path(tmp)

