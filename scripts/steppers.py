"""Sampling speed of the numpy engine against torch's stepper, the naive loop and (optionally) the code
before a change, on this machine.

    python scripts/steppers.py [--streams 1 16 64] [--rounds 10] [--before DIR]

A 2x512 LSTM (vocabulary 96) samples at temperature 0.8 from a one-character prime: through the numpy
engine (`charnn.generate.streams`, what samples on the CPU), through torch's `Stepper` (`TorchGenerator`, what
samples on a GPU, run here on the CPU), through the naive loop (nn.LSTM on a length-1 input,
multinomial, .item()), and with `--before DIR` through `charnn.generate` of the charnn checkout in DIR
(loaded as the package `charnn_before`: the code before a change, e.g. `git worktree add DIR 744ee50`).
They take turns of `charnn.bench.benchmark.SAMPLING_CHUNK` steps, with an uncounted pause between turns so that
none is timed against another's spinning threads; rates are medians over turns. numpy's BLAS thread
pool is the process's: while the engine samples it runs on one thread, for the loops of the code
before too (which on a 2-core VM only helps them: there every product OpenBLAS splits between two
threads takes 8 ms; `python scripts/startup.py --before DIR` times that code in processes of its own).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import torch

from charnn import CharRNN, ModelConfig, SamplingConfig, TorchGenerator, engine_from_model
from charnn.bench.baselines import naive_sampler
from charnn.bench.benchmark import SAMPLING_CHUNK, SAMPLING_PAUSE
from charnn.generate.streams import sample_streams

CONFIG = SamplingConfig(temperature=0.8)


def engine_loop(model: CharRNN, streams: int):
    for ids in sample_streams(engine_from_model(model), [0], 10**12, CONFIG, num_samples=streams, seed=0):
        ids.tolist()
        yield


def torch_loop(model: CharRNN, streams: int):
    generator = TorchGenerator(model, CONFIG, num_samples=streams, seed=0)
    generator.feed([0])
    for ids in generator.sample(10**12):
        ids.tolist()
        yield


def load_before(path: Path):
    """The charnn package in `path` (a checkout), imported as `charnn_before` beside this one."""
    spec = importlib.util.spec_from_file_location("charnn_before", path / "charnn" / "__init__.py",
                                                  submodule_search_locations=[str(path / "charnn")])
    module = importlib.util.module_from_spec(spec)
    sys.modules["charnn_before"] = module
    spec.loader.exec_module(module)
    return module


def before_loop(before, model: CharRNN, streams: int):
    """The checkout's own `generate` on a copy of the model built by its own classes."""
    old = before.CharRNN(before.ModelConfig(**model.config.to_dict()))
    old.load_state_dict(model.state_dict())
    old.eval()
    for ids in before.generate(old, [0], 10**12, before.SamplingConfig(temperature=0.8), num_samples=streams, seed=0):
        ids.tolist()
        yield


def take_turns(loops: dict, rounds: int, streams: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(rounds):
        for name, loop in loops.items():
            time.sleep(SAMPLING_PAUSE)
            start = time.perf_counter()
            for _ in range(SAMPLING_CHUNK):
                next(loop)
            times[name].append(time.perf_counter() - start)
    return {name: SAMPLING_CHUNK * streams / statistics.median(t[1:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--before", type=Path, help="a charnn checkout (the directory holding charnn/) to compare")
    args = parser.parse_args()
    before = load_before(args.before) if args.before else None
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=96, num_layers=2, hidden_size=512, embed_size=512)).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; chars/s, median of {args.rounds - 1} turns")
    names = ["engine", "torch", "naive"] + (["before"] if before else [])
    print(f"{'streams':>7} " + " ".join(f"{name:>9}" for name in names) + f" {'engine/torch':>13} {'engine/naive':>13}"
          + (f" {'engine/before':>14}" if before else ""))
    for streams in args.streams:
        loops = {"engine": engine_loop(model, streams), "torch": torch_loop(model, streams),
                 "naive": naive_sampler(model, streams)}
        if before:
            loops["before"] = before_loop(before, model, streams)
        rate = take_turns(loops, args.rounds, streams)
        line = f"{streams:>7} " + " ".join(f"{rate[name]:>9,.0f}" for name in names)
        line += f" {rate['engine'] / rate['torch']:>12.2f}x {rate['engine'] / rate['naive']:>12.1f}x"
        if before:
            line += f" {rate['engine'] / rate['before']:>13.2f}x"
        print(line, flush=True)


if __name__ == "__main__":
    main()
