#!/usr/bin/env python3
"""Sampling speed: charnn's Stepper against stepping nn.LSTM/GRU on length-1 inputs.

Both loops do the same work per character (one step of the network, temperature sampling,
feeding the sample back in) on an untrained model of the given size; the ratio is measured in
the same run, so it holds on any machine.

    python scripts/bench_sampling.py                       # 2x256 LSTM, 1 and 64 streams
    python scripts/bench_sampling.py --cell gru --hidden-size 512 --streams 1 16
"""

import argparse
import time

import torch

from charnn import CharRNN, ModelConfig
from charnn.sampling import SamplingConfig, Stepper, make_generator, sample_next


def naive_loop(model, ids, hidden, steps, config, generator):
    for _ in range(steps):
        logits, hidden = model(ids.view(1, -1), hidden)
        ids = sample_next(logits[0], config, generator)


def stepper_loop(model, ids, hidden, steps, config, generator):
    stepper = Stepper(model)
    state = stepper.state_from_hidden(hidden)
    for _ in range(steps):
        logits, state = stepper(ids, state)
        ids = sample_next(logits, config, generator)


@torch.inference_mode()
def chars_per_second(loop, model, streams: int, seconds: float) -> float:
    config = SamplingConfig(temperature=0.8)
    generator = make_generator(0, torch.device("cpu"))
    ids = torch.zeros(streams, dtype=torch.long)
    _, hidden = model(ids.view(1, -1))
    loop(model, ids, hidden, 20, config, generator)  # warm up
    steps, start = 0, time.perf_counter()
    chunk = 20
    while time.perf_counter() - start < seconds:
        loop(model, ids, hidden, chunk, config, generator)
        steps += chunk
    return steps * streams / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cell", default="lstm", choices=["lstm", "gru", "rnn"])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--embed-size", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=65)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per measurement")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=args.vocab_size, cell=args.cell, num_layers=args.layers,
                                hidden_size=args.hidden_size, embed_size=args.embed_size)).eval()
    print(f"{args.layers}x{args.hidden_size} {args.cell.upper()}, embed {args.embed_size}, "
          f"vocabulary {args.vocab_size}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'streams':>7} {'nn.' + args.cell.upper() + ' step':>16} {'Stepper':>12} {'ratio':>7}   (chars/s)")
    for streams in args.streams:
        naive = chars_per_second(naive_loop, model, streams, args.seconds)
        fast = chars_per_second(stepper_loop, model, streams, args.seconds)
        print(f"{streams:7d} {naive:16,.0f} {fast:12,.0f} {fast / naive:6.1f}x")


if __name__ == "__main__":
    main()
