"""Load on `charnn serve`: throughput, time to first character and the server's memory.

Starts `charnn serve MODEL` on a free loopback port, then for each client count runs that many
concurrent streaming clients, each sending `--requests` requests one after another (a prompt of
`--prompt-chars` characters the model itself wrote, then `--chars` characters), and prints:

- characters per second over all clients, and as a multiple of one client's;
- time to first character (the first streamed chunk with text), median and 90th percentile;
- with `--soak SECONDS`, repeated clients for that long, a third of them hanging up halfway, and the
  server's resident memory every few seconds (flat: no leak from finished or abandoned requests).

Usage:
    python scripts/serve_load.py runs/my-run --clients 1,32 --chars 500 --prompt-chars 100
    python scripts/serve_load.py runs/my-run --clients 32 --soak 600

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
import statistics
import subprocess
import sys
import threading
import time

import httpx


def start_server(model: str, clients: int) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "charnn", "serve", model, "--port", "0", "--max-concurrent",
                                str(max(clients, 64)), "--max-tokens", "100000"], stderr=subprocess.PIPE)
    for line in process.stderr:
        match = re.search(rb"serving at (http://\S+) ", line)
        if match:
            threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()  # keep the pipe drained
            return process, match.group(1).decode()
    raise SystemExit(f"the server did not start (exit code {process.wait()})")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


_EVENT = re.compile(rb"data: (\{.*?\})\n\n")


async def one_request(address: tuple[str, int], body: dict, hang_up_after: int | None = None):
    """(seconds to the first character, characters received, seconds in all) of one streamed request.

    A bare HTTP/1.1 client on asyncio streams: an HTTP library in this process would take a share of
    the CPU the server needs (each event is one chunk of the chunked body, so a regex finds them)."""
    payload = json.dumps(body).encode()
    start = time.perf_counter()
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"POST /v1/completions HTTP/1.1\r\nHost: load\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(payload), payload))
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
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    process, url = start_server(args.model, max(counts))
    host, port = url.removeprefix("http://").rsplit(":", 1)
    address = (host, int(port))
    try:
        seed_text = httpx.post(url + "/v1/completions", timeout=60, json={
            "max_tokens": args.prompt_chars, "seed": 0, "temperature": 0.8}).json()["choices"][0]["text"]
        print(f"server pid {process.pid} at {url}; {os.cpu_count()} CPUs; load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
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
