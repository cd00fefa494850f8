"""Sampling speed of charnn's two steppers against each other and the naive loop, on this machine.

    python scripts/steppers.py [--streams 1 16 64] [--rounds 10]

A 2x512 LSTM (vocabulary 96) samples at temperature 0.8 through `charnn.generate` with each stepper
forced in turn (`Stepper`: torch; `BlasStepper`: numpy's BLAS), and through the naive loop (nn.LSTM on
a length-1 input, multinomial, .item()). They take turns of `charnn.bench.SAMPLING_CHUNK` steps, with
an uncounted pause between turns so that neither is timed against the other's spinning threads; rates
are medians over turns. This is the measurement behind `make_stepper`'s choice: numpy's for one
stream, torch's for more (where numpy's is no faster, and clashes with torch's threads as soon as an
option such as --top-k runs in torch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from charnn import CharRNN, ModelConfig, SamplingConfig, generate, sampling
from charnn.baselines import naive_sampler
from charnn.bench import SAMPLING_CHUNK, SAMPLING_PAUSE
from charnn.stepper import BlasStepper, Stepper


def charnn_loop(model: CharRNN, streams: int, stepper_class):
    original = sampling.make_stepper
    sampling.make_stepper = lambda model, logit_scale=1.0, streams=1: stepper_class(model, logit_scale)
    try:
        steps = generate(model, [0], 10**12, SamplingConfig(temperature=0.8), num_samples=streams, seed=0)
        next(steps)  # the generator is built (and its stepper chosen) on the first step
    finally:
        sampling.make_stepper = original
    while True:
        next(steps).tolist()
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=96, num_layers=2, hidden_size=512, embed_size=512)).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; chars/s, median of {args.rounds - 1} turns")
    print(f"{'streams':>7} {'Stepper':>10} {'BlasStepper':>12} {'naive':>8} {'Blas/torch':>11} {'best/naive':>11}")
    for streams in args.streams:
        loops = {"torch": charnn_loop(model, streams, Stepper), "blas": charnn_loop(model, streams, BlasStepper),
                 "naive": naive_sampler(model, streams)}
        times: dict[str, list[float]] = {name: [] for name in loops}
        for _ in range(args.rounds):
            for name, loop in loops.items():
                time.sleep(SAMPLING_PAUSE)
                start = time.perf_counter()
                for _ in range(SAMPLING_CHUNK):
                    next(loop)
                times[name].append(time.perf_counter() - start)
        rate = {name: SAMPLING_CHUNK * streams / statistics.median(t[1:]) for name, t in times.items()}
        best = max(rate["torch"], rate["blas"])
        print(f"{streams:>7} {rate['torch']:>10,.0f} {rate['blas']:>12,.0f} {rate['naive']:>8,.0f} "
              f"{rate['blas'] / rate['torch']:>10.2f}x {best / rate['naive']:>10.1f}x")


if __name__ == "__main__":
    main()
