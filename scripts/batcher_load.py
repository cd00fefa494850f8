"""The batching core of `charnn serve` alone, without HTTP, pipes or a load generator: what the batcher
itself costs against offline sampling.

C clients each submit a request for 200 characters (an answer not streamed, as `hey`'s are) and submit
the next as soon as it is answered; after a second of warm-up, the characters answered in --seconds are
counted. Offline is `Streams.sample` at C streams of the same model, in the same process, right after.
The ratio is the batcher's efficiency; `scripts/serve_load.py` adds HTTP, the engines' pipes and `hey`.

Usage:
    python scripts/batcher_load.py                       # 8 clients, the shipped `english` model
    python scripts/batcher_load.py --clients 1,8,32 --seconds 4 --model runs/demo
    PYTHONPATH=/tmp/before python scripts/batcher_load.py   # another checkout's charnn, to take turns with
"""

from __future__ import annotations

import argparse
import threading
import time

from charnn.generate.sampler import open_sampling_model
from charnn.generate.streams import Streams
from charnn.runtime.threads import resolve_threads
from charnn.serve.batcher import Batcher, CompletionRequest

CHARS = 200


def served(loaded, clients: int, seconds: float) -> float:
    """Characters a second answered to `clients` clients that each resubmit at once."""
    batcher = Batcher(loaded.model, loaded.vocab).start()
    batcher.hand_over = None  # no event loop shares this process's GIL
    answered, lock, seeds, stopping = [0], threading.Lock(), iter(range(1, 10**9)), threading.Event()

    def deliver(pieces) -> None:
        if isinstance(pieces, BaseException):
            return
        with lock:
            answered[0] += sum(len(piece.text) for piece in pieces)
        if not stopping.is_set():
            batcher.submit(CompletionRequest(max_tokens=CHARS, seed=next(seeds)), deliver, whole=True)

    for _ in range(clients):
        batcher.submit(CompletionRequest(max_tokens=CHARS, seed=next(seeds)), deliver, whole=True)
    time.sleep(1.0)
    before, started = answered[0], time.perf_counter()
    time.sleep(seconds)
    rate = (answered[0] - before) / (time.perf_counter() - started)
    stopping.set()
    batcher.stop(timeout=5)
    return rate


def offline(loaded, streams: int, steps: int = 1500) -> float:
    """Characters a second of `streams` streams sampled together (after 300 steps for the thread policy)."""
    batch = Streams.start(loaded.model, num_samples=streams, seed=1)
    batch.feed([0])
    for _ in batch.sample(300):
        pass
    started = time.perf_counter()
    for _ in batch.sample(steps):
        pass
    return streams * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="english", help="run directory, checkpoint, .safetensors file or a base model")
    parser.add_argument("--clients", default="8", help="client counts, comma-separated")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds counted for each client count")
    args = parser.parse_args()
    loaded = open_sampling_model(args.model, "cpu", resolve_threads(None))
    print("| clients | batcher characters/s | offline characters/s | ratio |")
    print("| ---: | ---: | ---: | ---: |")
    for clients in map(int, args.clients.split(",")):
        rate = served(loaded, clients, args.seconds)
        alone = offline(loaded, clients)
        print(f"| {clients} | {rate:,.0f} | {alone:,.0f} | {rate / alone:.2f} |", flush=True)


if __name__ == "__main__":
    main()
