"""Streaming clients and a long soak on `charnn serve`: throughput, time to first character and the
server's memory (the issue's load and efficiency tables, with `hey`, are `scripts/serve_load.py`'s).

Starts `charnn serve MODEL` on a free loopback port (one worker process unless --workers says more, so
that the memory figures are the one process's), then for each client count runs that many
concurrent streaming clients, each sending `--requests` requests one after another (a prompt of
`--prompt-chars` characters the model itself wrote, then `--chars` characters), and prints:

- characters per second over all clients, and as a multiple of one client's;
- time to first character (the first streamed chunk with text), median and 90th percentile;
- with `--soak SECONDS`, repeated clients for that long, a third of them hanging up halfway, and the
  server's resident memory every few seconds (flat: no leak from finished or abandoned requests);
- with `--slow-readers K`, instead of the above: rounds of K connections that ask for a streamed
  answer (`--chars` characters, `--n` choices) and never read a byte, and the server's resident memory
  against the idle server's (the server pauses such a stream and drops it after --write-timeout).

Usage:
    python scripts/serve_soak.py runs/my-run --clients 1,32 --chars 500 --prompt-chars 100
    python scripts/serve_soak.py runs/my-run --clients 32 --soak 600
    python scripts/serve_soak.py runs/my-run --slow-readers 64 --chars 4096 --n 16 --rounds 3

The clients run in this process, on the same machine as the server: on a small machine they take
some of its CPU, so the figures are a floor for what the server does alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
from pathlib import Path
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx


def start_server(model: str, clients: int, workers: str = "1") -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "charnn", "serve", model, "--port", "0", "--max-concurrent",
                                str(max(clients, 64)), "--max-tokens", "100000", "--workers", workers],
                               stderr=subprocess.PIPE)
    for line in process.stderr:
        match = re.search(rb"serving at (http://\S+) ", line)
        if match:
            threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()  # keep the pipe drained
            return process, match.group(1).decode()
    raise SystemExit(f"the server did not start (exit code {process.wait()})")


def rss_mib(pid: int) -> float:
    """The resident memory of the server: its process and its children (workers and engines) together."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    below = sum(rss_mib(int(child)) for child in children.read_text().split()) if children.exists() else 0.0
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024 + below
    return float("nan")


_EVENT = re.compile(rb"data: (\{.*?\})\n\n")


async def one_request(address: tuple[str, int], body: dict, hang_up_after: int | None = None):
    """(seconds to the first character, characters received, seconds in all) of one streamed request.

    A bare HTTP/1.1 client on asyncio streams: an HTTP library in this process would take a share of
    the CPU the server needs (each event is one chunk of the chunked body, so a regex finds them)."""
    payload = json.dumps(body).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (address[0].encode(), len(payload), payload))
    first, chars, buffer = None, 0, b""
    try:
        while b"data: [DONE]" not in buffer:
            data = await reader.read(65536)
            if not data:
                raise RuntimeError(f"the server closed the stream early: {buffer[:300]!r}")
            buffer += data
            end = 0
            for match in _EVENT.finditer(buffer):
                chars += sum(len(choice["text"]) for choice in json.loads(match.group(1))["choices"])
                end = match.end()
            buffer = buffer[end:]
            if chars and first is None:
                first = time.perf_counter() - start
            if hang_up_after is not None and chars >= hang_up_after:
                break
    finally:
        writer.close()
    return first, chars, time.perf_counter() - start


async def round_of(address: tuple[str, int], clients: int, requests: int, prompt: str, chars: int) -> dict:
    """`clients` clients at once, each sending `requests` requests in turn."""
    async def client_loop(index: int):
        results = []
        for number in range(requests):
            body = {"prompt": prompt, "max_tokens": chars, "seed": index * 1000 + number, "stream": True}
            results.append(await one_request(address, body))
        return results

    start = time.perf_counter()
    results = [r for rs in await asyncio.gather(*(client_loop(i) for i in range(clients))) for r in rs]
    wall = time.perf_counter() - start
    firsts = sorted(r[0] for r in results if r[0] is not None)
    return {"clients": clients, "requests": len(results), "chars": sum(r[1] for r in results), "seconds": wall,
            "chars_per_second": sum(r[1] for r in results) / wall,
            "ttfc_median_ms": 1000 * statistics.median(firsts),
            "ttfc_p90_ms": 1000 * firsts[math.ceil(0.9 * len(firsts)) - 1]}  # nearest rank


async def soak(address: tuple[str, int], pid: int, clients: int, seconds: float, prompt: str,
               chars: int) -> list[tuple[float, float]]:
    """Clients in a loop for `seconds`, every third hanging up halfway; the server's RSS every 5 s."""
    samples, stop_at, counts = [], time.monotonic() + seconds, {"finished": 0, "hung up": 0}

    async def client_loop(index: int):
        number = 0
        while time.monotonic() < stop_at:
            body = {"prompt": prompt, "max_tokens": chars, "seed": number, "stream": True}
            hang_up = (index + number) % 3 == 0
            await one_request(address, body, hang_up_after=chars // 2 if hang_up else None)
            counts["hung up" if hang_up else "finished"] += 1
            number += 1

    async def watch():
        start = time.monotonic()
        while time.monotonic() < stop_at:
            samples.append((time.monotonic() - start, rss_mib(pid)))
            print(f"  {samples[-1][0]:6.0f} s  server RSS {samples[-1][1]:7.1f} MiB", flush=True)
            await asyncio.sleep(5)

    await asyncio.gather(watch(), *(client_loop(i) for i in range(clients)))
    print(f"  {counts['finished']:,} requests finished, {counts['hung up']:,} hung up halfway")
    return samples


async def texts_of(url: str, bodies: list[dict]) -> list[str]:
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=len(bodies) + 4)) as client:
        async def one(body):
            response = await client.post(url + "/v1/completions", json=body)
            return response.json()["choices"][0]["text"]

        return list(await asyncio.gather(*(one(body) for body in bodies)))


def determinism(url: str, count: int, prompt: str, chars: int) -> None:
    """The same seeded requests alone (one at a time) and all at once: how many texts differ, and where."""
    bodies = [{"prompt": prompt, "max_tokens": chars, "seed": seed, "temperature": 0.8} for seed in range(count)]
    alone = [asyncio.run(texts_of(url, [body]))[0] for body in bodies]
    again = [asyncio.run(texts_of(url, [body]))[0] for body in bodies[:8]]
    batched = asyncio.run(texts_of(url, bodies))
    differ = [next(i for i, (a, b) in enumerate(zip(x, y)) if a != b) for x, y in zip(alone, batched) if x != y]
    print(f"alone twice: {sum(a == b for a, b in zip(alone, again))} of {len(again)} texts identical")
    print(f"{count} requests of {chars} characters batched together against each alone: "
          f"{count - len(differ)} identical, {len(differ)} differ"
          + (f" (first difference at character {', '.join(map(str, sorted(differ)))})" if differ else ""))


def reader_socket(host: str, port: int) -> socket.socket:
    """A connection with a small receive buffer, as a client behind a slow link has: on loopback the
    kernel would otherwise take megabytes of each answer off the server's hands."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host.strip("[]"), port))
    return sock


def slow_readers(url: str, pid: int, clients: int, rounds: int, seconds: float, body: dict) -> None:
    """Rounds of `clients` connections that send a streamed request and never read; the server's RSS
    every half second, against the idle server's."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    payload = json.dumps({**body, "stream": True}).encode()
    request = (b"POST /v1/completions HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%s" % (host.encode(), len(payload), payload))
    idle = rss_mib(pid)
    print(f"idle server RSS {idle:.1f} MiB; {rounds} rounds of {clients} connections asking for "
          f"{body['max_tokens']} characters x {body['n']} choices, never reading, {seconds:.0f} s each")
    peaks = []
    for number in range(rounds):
        socks = [reader_socket(host, int(port)) for _ in range(clients)]
        for sock in socks:
            sock.sendall(request)
        peak, paused, stop_at = idle, 0, time.monotonic() + seconds
        while time.monotonic() < stop_at:
            time.sleep(0.5)
            peak = max(peak, rss_mib(pid))
            paused = max(paused, httpx.get(url + "/health", timeout=30).json().get("paused", 0))
        for sock in socks:
            sock.close()
        time.sleep(1)
        peaks.append(peak)
        print(f"  round {number + 1}: peak RSS {peak:.1f} MiB (+{peak - idle:.1f} over idle), at most {paused} "
              f"requests paused; {rss_mib(pid):.1f} MiB after the clients left", flush=True)
    print(f"largest rise over the idle server: {max(peaks) - idle:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="run directory, checkpoint or .safetensors file")
    parser.add_argument("--clients", default="1,32", help="client counts to run, comma-separated")
    parser.add_argument("--requests", type=int, default=3, help="requests per client, one after another")
    parser.add_argument("--chars", type=int, default=500, help="characters per request (max_tokens)")
    parser.add_argument("--prompt-chars", type=int, default=100)
    parser.add_argument("--soak", type=float, default=0, help="then run repeated clients for this many seconds")
    parser.add_argument("--determinism", type=int, default=0, metavar="K",
                        help="then compare K seeded requests batched together with each alone")
    parser.add_argument("--slow-readers", type=int, default=0, metavar="K",
                        help="only this: rounds of K connections that never read, and the server's memory")
    parser.add_argument("--n", type=int, default=16, help="choices per request with --slow-readers")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of --slow-readers")
    parser.add_argument("--round-seconds", type=float, default=10, help="how long each round's clients stay")
    parser.add_argument("--workers", default="1", help="the server's --workers (memory: all its processes together)")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    process, url = start_server(args.model, max(counts + [args.slow_readers]), args.workers)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    address = (host, int(port))
    try:
        seed_text = httpx.post(url + "/v1/completions", timeout=60, json={
            "max_tokens": args.prompt_chars, "seed": 0, "temperature": 0.8}).json()["choices"][0]["text"]
        print(f"server pid {process.pid} at {url}; {os.cpu_count()} CPUs; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if args.slow_readers:
            slow_readers(url, process.pid, args.slow_readers, args.rounds, args.round_seconds,
                         {"prompt": seed_text, "max_tokens": args.chars, "n": args.n})
            return
        print(f"{'clients':>7} {'requests':>8} {'chars/s':>9} {'x one':>6} {'TTFC median':>12} {'TTFC p90':>9}")
        base = None
        for count in counts:
            asyncio.run(round_of(address, count, 1, seed_text, 20))  # warm up: connections, the first steps
            row = asyncio.run(round_of(address, count, args.requests, seed_text, args.chars))
            base = base or row["chars_per_second"]
            print(f"{count:7d} {row['requests']:8d} {row['chars_per_second']:9.0f} "
                  f"{row['chars_per_second'] / base:6.2f} {row['ttfc_median_ms']:9.1f} ms {row['ttfc_p90_ms']:6.1f} ms",
                  flush=True)
        if args.determinism:
            determinism(url, args.determinism, seed_text, args.chars)
        if args.soak:
            print(f"soak: {max(counts)} clients for {args.soak:.0f} s, a third hanging up halfway")
            samples = asyncio.run(soak(address, process.pid, max(counts), args.soak, seed_text, args.chars))
            later = [rss for t, rss in samples if t >= min(60, args.soak / 4)] or [s[1] for s in samples]
            print(f"server RSS: {samples[0][1]:.1f} MiB at the start, {min(later):.1f}-{max(later):.1f} MiB after "
                  f"warming up, {samples[-1][1]:.1f} MiB at the end")
    finally:
        process.terminate()
        process.wait(30)


if __name__ == "__main__":
    main()
