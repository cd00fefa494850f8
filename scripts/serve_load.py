"""Load on `charnn serve`, as issue 25 measures it: throughput under `hey`, efficiency against offline
sampling, time to the first character, and 429s at the concurrency limit.

Needs `hey`, a standard HTTP load generator (Debian and Ubuntu: `apt-get install hey`).

For each worker count in --workers, it starts `charnn serve MODEL --workers W --max-concurrent 64` on a
free loopback port (or, with --url, drives a server already running: give --pid for its CPU), and prints
Markdown tables:

(a) load: for C = 1, 8, 32 and 64 clients, `hey` POSTing 200-character completions for --seconds (in
    --rounds stretches): requests/s, characters/s, p50 latency, the server's CPU (cores used, from /proc:
    the server and its worker processes) and the answers that were 429;
(b) efficiency: served characters/s at C clients over offline characters/s at C streams, offline being
    the same model sampled in this process through the library, as `charnn sample -n 2000
    --num-samples C` samples. Offline is measured before a cell's first stretch and after each one (the
    server idle meanwhile), and each stretch is held to the mean of the two beside it: a shared machine's
    speed wanders by more than the server loses. The cell's efficiency is its stretches' median (their
    range in brackets);
(c) time to the first character of streamed 200-character requests (this script's own asyncio
    clients): alone, one request after another, and among 32 streaming clients;
(d) 64 clients at --max-concurrent 64 for --seconds: how many answers were 429 (row C = 64 of (a)).

Usage:
    python scripts/serve_load.py                                # the shipped base model `english`
    python scripts/serve_load.py --model runs/demo --workers 1,2 --seconds 30
    python scripts/serve_load.py --model runs/demo --url http://127.0.0.1:8000 --pid 1234
    python scripts/serve_load.py --seconds 3 --json > load.json

The clients and `hey` run on the same machine as the server: on a small machine they take some of its
CPU, so the figures are a floor for what the server does alone.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

from serve_soak import one_request, start_server

CLIENTS = (1, 8, 32, 64)
CHARS = 200  # per completion
OFFLINE_CHARS = 2000  # per offline stream, as `charnn sample -n 2000`
STREAMING_CLIENTS = 32
HEY_INSTALL = "apt-get install hey"


def find_hey() -> str:
    hey = shutil.which("hey")
    if hey is None:
        raise SystemExit("serve_load.py: `hey` is not installed; the load table is measured with it.\n"
                         f"  Debian or Ubuntu: {HEY_INSTALL}   (elsewhere: go install github.com/rakyll/hey@latest)")
    return hey


def cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and its children (a server's workers), user and system, from /proc."""
    pids = [pid]
    try:
        pids += [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    ticks = 0
    for one in pids:
        try:
            fields = Path(f"/proc/{one}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime and stime: fields 14 and 15 of stat
    return ticks / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))] if ordered else float("nan")


def hey_run(hey: str, url: str, clients: int, seconds: float, pid: int | None) -> dict:
    """`clients` hey clients POSTing completions of CHARS characters for `seconds`: the answers' status
    codes and latencies, the span they took, and the server's CPU seconds meanwhile."""
    body = json.dumps({"prompt": "", "max_tokens": CHARS})
    before, started = (cpu_seconds(pid) if pid else 0.0), time.perf_counter()
    result = subprocess.run([hey, "-z", f"{seconds:g}s", "-c", str(clients), "-m", "POST", "-T", "application/json",
                             "-d", body, "-o", "csv", url + "/v1/completions"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"hey failed ({result.returncode}): {result.stderr.strip()[:500]}")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    return {"codes": [row["status-code"] for row in rows],
            "latencies": [1000 * float(row["response-time"]) for row in rows if row["status-code"] == "200"],
            "span": max((float(row["offset"]) + float(row["response-time"]) for row in rows), default=seconds),
            "cpu": cpu_seconds(pid) - before if pid else float("nan"), "wall": wall}


def load_cell(hey: str, url: str, clients: int, seconds: float, rounds: int, pid: int | None,
              offline: Offline) -> dict:
    """`clients` clients for `seconds` in all, as `rounds` stretches, with offline's speed at as many
    streams measured before the first and after each (the server idle meanwhile). A stretch's efficiency
    is its served characters a second over the mean of offline's just before and just after it; the
    cell's is the median of its stretches'."""
    hey_run(hey, url, clients, min(seconds, 2.0), None)  # warm up: connections, the first steps
    offlines, runs = [offline.rate(clients)], []
    for _ in range(rounds):
        runs.append(hey_run(hey, url, clients, seconds / rounds, pid))
        offlines.append(offline.rate(clients))
    served = [run["codes"].count("200") * CHARS / run["span"] for run in runs]
    shares = [rate / statistics.fmean(offlines[i:i + 2]) for i, rate in enumerate(served)]
    codes = [code for run in runs for code in run["codes"]]
    latencies = [latency for run in runs for latency in run["latencies"]]
    span, ok = sum(run["span"] for run in runs), codes.count("200")
    return {"clients": clients, "requests": ok, "seconds": span, "requests_per_second": ok / span,
            "chars_per_second": ok * CHARS / span, "p50_ms": statistics.median(latencies) if latencies else None,
            "server_cores": sum(run["cpu"] for run in runs) / sum(run["wall"] for run in runs),
            "status_429": codes.count("429"), "other_errors": sum(code not in ("200", "429") for code in codes),
            "offline_chars_per_second": statistics.median(offlines), "offline_runs": offlines,
            "efficiency": statistics.median(shares), "stretch_efficiencies": shares}


class Offline:
    """Characters a second of C streams sampled offline, in this process, as `charnn sample -n 2000
    --num-samples C` does: the figure the server is held to. Measured again beside every stretch of load
    (the server idle meanwhile), because a shared machine's own speed wanders: 8 streams made 21k to 35k
    characters a second between runs an hour apart on a 2-vCPU VM, more than the server's losses."""

    def __init__(self, model: str):
        from charnn.generate.sampler import open_sampling_model
        from charnn.runtime.threads import resolve_threads

        self.loaded = open_sampling_model(model, "cpu", resolve_threads(None))
        self.settled: set[int] = set()

    def rate(self, streams: int) -> float:
        """One run of OFFLINE_CHARS characters a stream, after a first, untimed one for a new count (the
        thread policy's first probe would otherwise lower the figure)."""
        if streams not in self.settled:
            self._sample(streams, seed=1)
            self.settled.add(streams)
        started = time.perf_counter()
        self._sample(streams, seed=0)
        return streams * OFFLINE_CHARS / (time.perf_counter() - started)

    def _sample(self, streams: int, seed: int) -> None:
        from charnn.generate.output import BufferedOutput, write_samples
        from charnn.generate.settings import SampleRequest

        with open(os.devnull, "wb") as sink:
            output = BufferedOutput(sink)
            write_samples(self.loaded.model, self.loaded.vocab,
                          SampleRequest(length=OFFLINE_CHARS, num_samples=streams, seed=seed), output)
            output.close()


async def first_characters(address: tuple[str, int], clients: int, seconds: float) -> list[float]:
    """Seconds to the first character of each streamed request of `clients` clients, each sending
    requests one after another for `seconds`."""
    stop_at, firsts = time.monotonic() + seconds, []

    async def client():
        while time.monotonic() < stop_at:
            first, chars, _ = await one_request(address, {"prompt": "", "max_tokens": CHARS, "stream": True})
            if first is not None and chars == CHARS:
                firsts.append(first)

    await asyncio.gather(*(client() for _ in range(clients)))
    return firsts


def ttfc(url: str, seconds: float) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    address = (host.strip("[]"), int(port))
    alone = asyncio.run(first_characters(address, 1, seconds))
    among = asyncio.run(first_characters(address, STREAMING_CLIENTS, seconds))
    return {"alone_median_ms": 1000 * statistics.median(alone), "alone_p90_ms": 1000 * percentile(alone, 0.9),
            "alone_requests": len(alone), "among_median_ms": 1000 * statistics.median(among),
            "among_p90_ms": 1000 * percentile(among, 0.9), "among_requests": len(among)}


def measure(hey: str, url: str, pid: int | None, seconds: float, rounds: int, clients: tuple[int, ...],
            offline: Offline) -> dict:
    """The load table at each of `clients`, in that order, then the time to the first character."""
    answer = httpx.post(url + "/v1/completions", json={"prompt": "", "max_tokens": CHARS}, timeout=60).json()
    if answer["usage"]["completion_tokens"] != CHARS:  # each answer counts CHARS characters below
        raise SystemExit(f"a completion of {CHARS} characters came back with {answer['usage']}")
    load = []
    for count in clients:
        load.append(load_cell(hey, url, count, seconds, rounds, pid, offline))
        print(f"  {count} clients: {load[-1]['chars_per_second']:,.0f} characters/s, offline "
              f"{load[-1]['offline_chars_per_second']:,.0f}", file=sys.stderr, flush=True)
    return {"load": load, "ttfc": ttfc(url, seconds)}


def markdown(result: dict, seconds: float) -> str:
    lines = [f"### {result['label']}", "", "| clients | requests/s | characters/s | p50 latency | server CPU | 429s |",
             "| ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in result["load"]:
        lines.append(f"| {row['clients']} | {row['requests_per_second']:.1f} | {row['chars_per_second']:,.0f} | "
                     f"{row['p50_ms']:.0f} ms | {row['server_cores']:.2f} core | {row['status_429']} |")
    lines += ["", "| clients | served characters/s | offline characters/s | efficiency (stretches) |", "| ---: | ---: | ---: | ---: |"]
    for row in result["load"]:
        spread = f"{min(row['stretch_efficiencies']):.2f}-{max(row['stretch_efficiencies']):.2f}"
        lines.append(f"| {row['clients']} | {row['chars_per_second']:,.0f} | {row['offline_chars_per_second']:,.0f} | "
                     f"{row['efficiency']:.2f} ({spread}) |")
    t, last = result["ttfc"], result["load"][-1]
    lines += ["", f"Time to first character: {t['alone_median_ms']:.1f} ms median alone (p90 {t['alone_p90_ms']:.1f} ms, "
                  f"{t['alone_requests']} requests); {t['among_median_ms']:.1f} ms among {STREAMING_CLIENTS} streaming "
                  f"clients (p90 {t['among_p90_ms']:.1f} ms, {t['among_requests']} requests).",
              f"{last['clients']} clients at --max-concurrent 64 for {seconds:g} s: {last['status_429']} answered 429"
              + (f", {last['other_errors']} other errors." if last["other_errors"] else "."), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     epilog=f"Needs hey: {HEY_INSTALL}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="english", help="run directory, checkpoint, .safetensors file or a "
                        "shipped model's name (default: english)")
    parser.add_argument("--workers", default="1,auto", help="the server's --workers, a run for each (comma-separated)")
    parser.add_argument("--seconds", type=float, default=30, help="seconds for each cell of the tables")
    parser.add_argument("--rounds", type=int, default=3, help="stretches each cell is cut into, offline's "
                        "speed measured before the first and after each (default: 3)")
    parser.add_argument("--clients", default=",".join(map(str, CLIENTS)),
                        help="the client counts of the load table, in this order (comma-separated)")
    parser.add_argument("--url", help="a server already running (with --model's model): measured, not started")
    parser.add_argument("--pid", type=int, help="with --url: the server's process, for its CPU")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of Markdown")
    args = parser.parse_args()
    hey = find_hey()
    print(f"offline: {args.model}, {OFFLINE_CHARS} characters a stream", file=sys.stderr, flush=True)
    offline, clients = Offline(args.model), tuple(int(count) for count in args.clients.split(","))
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    machine = {"cpus": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()], "model": args.model,
               "seconds": args.seconds, "rounds": args.rounds}
    results = []
    for workers in ([None] if args.url else args.workers.split(",")):
        label = f"server at {args.url}" if args.url else f"--workers {workers}"
        print(f"{label}:", file=sys.stderr, flush=True)
        process, url = (None, args.url) if args.url else start_server(args.model, 64, workers)
        try:
            pid = args.pid if args.url else process.pid
            results.append({"label": label, "workers": workers, **measure(hey, url, pid, args.seconds, args.rounds, clients,
                                                                                  offline)})
        finally:
            if process is not None:
                process.terminate()
                process.wait(60)
    if args.json:
        print(json.dumps({**machine, "results": results}, indent=1))
        return
    print(f"{machine['cpus']} CPUs, load average {' '.join(map(str, machine['load_average']))}; model {args.model}; "
          f"{CHARS}-character completions, {args.seconds:g} s a cell in {args.rounds} stretches\n")
    print("\n".join(markdown(result, args.seconds) for result in results))


if __name__ == "__main__":
    main()
