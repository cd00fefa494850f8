"""`charnn serve --workers N`: processes sharing the port, the limits counted for the server as a whole,
the same text whichever worker answers, and every worker stopped with the server (no orphans)."""

import json
import os
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from charnn import CharnnError
from charnn.config import ServeConfig
from charnn.runtime.threads import ThreadChoice
from charnn.serve.tally import Tally
from charnn.serve.workers import worker_count
from conftest import run_cli
from test_serve import Server, complete, wait_for


@pytest.fixture(scope="module")
def model(workdir):
    return workdir["run"]


def workers_of(server) -> list[int]:
    """The server's processes (its children): the HTTP workers, then the engines."""
    pid = server.process.pid
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def gone(pid: int) -> bool:
    status = Path(f"/proc/{pid}/status")
    return not status.exists() or "State:\tZ" in status.read_text()


def test_auto_is_one_worker_per_core_of_threads_and_never_more_than_the_requests_allowed():
    auto = ServeConfig()
    assert worker_count(auto, ThreadChoice(None, "auto", 8)) == 8
    assert worker_count(auto, ThreadChoice(2, "--threads", 8)) == 4
    assert worker_count(ServeConfig(max_concurrent=3), ThreadChoice(None, "auto", 8)) == 3
    assert worker_count(ServeConfig(workers="2"), ThreadChoice(None, "auto", 8)) == 2


@pytest.mark.parametrize("value", ["0", "many", "-1", "100000"])
def test_a_worker_count_that_is_not_one_is_one_line(value):
    with pytest.raises(CharnnError, match="--workers must be auto or a whole number from 1 to 256"):
        ServeConfig(workers=value).validate()


def test_the_tally_holds_a_limit_across_rows():
    tally = Tally(2)
    assert tally.take("slots", 2)
    tally.row = 1
    assert tally.take("slots", 2) and not tally.take("slots", 2)
    assert tally.total("slots") == 2 and tally.others("slots") == 1
    tally.clear(0)
    assert tally.take("slots", 2)


def test_the_same_seed_gives_the_same_text_whichever_worker_answers(model):
    body = {"prompt": "ROMEO:", "max_tokens": 300, "seed": 5, "temperature": 0.9, "top_k": 30}
    one = Server(model, "--workers", 1)
    try:
        expected = complete(one, **body)["choices"][0]["text"]
        assert httpx.get(one.url + "/health").json()["workers"] == 1
    finally:
        assert one.stop() == 143
    two = Server(model, "--workers", 2)
    try:
        assert "2 worker processes" in two.stderr and two.stderr.count("serving at") == 1
        answering = {httpx.get(two.url + "/health").json()["worker"] for _ in range(40)}  # a connection each
        assert answering == {0, 1}  # the kernel spreads connections over both
        texts = [complete(two, **body)["choices"][0]["text"] for _ in range(16)]
        streamed = [stream_text(two, body) for _ in range(4)]
        assert set(texts + streamed) == {expected}
    finally:
        assert two.stop() == 143


def stream_text(server, body) -> str:
    with httpx.stream("POST", server.url + "/v1/completions", json={**body, "stream": True}, timeout=60) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: {")]
    return "".join(json.loads(event)["choices"][0]["text"] for event in events)


def test_max_concurrent_is_the_servers_total_not_each_workers(model):
    server = Server(model, "--workers", 2, "--max-concurrent", 3, "--max-tokens", 10_000_000)
    try:
        long = {"prompt": "ROMEO:", "max_tokens": 10_000_000, "stream": True}
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        socks = []
        for _ in range(3):  # on connections of their own: the kernel spreads them over the workers
            sock = socket.create_connection((host, int(port)), timeout=5)
            payload = json.dumps(long).encode()
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
            assert sock.recv(12).endswith(b"200")
            socks.append(sock)
        health = httpx.get(server.url + "/health").json()
        assert health["slots"] == 3 and health["requests"] == 3 and health["workers"] == 2
        for _ in range(6):
            assert httpx.post(server.url + "/v1/completions", json={"prompt": "a"}).status_code == 429
        for sock in socks:
            sock.close()
        wait_for(lambda: httpx.get(server.url + "/health").json()["slots"] == 0)
        assert complete(server, prompt="ROMEO:", max_tokens=5)["choices"][0]["finish_reason"] == "length"
    finally:
        assert server.stop() == 143


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_lets_every_workers_streams_finish_then_stops_them_all(model, signum, code):
    server = Server(model, "--workers", 2, "--max-tokens", 100_000, "--grace-seconds", 20)
    workers = workers_of(server)
    assert len(workers) == 4  # two HTTP workers and two engines
    streams = [httpx.stream("POST", server.url + "/v1/completions", timeout=60,
                            json={"prompt": "ROMEO:", "max_tokens": 3000, "seed": s, "stream": True}) for s in range(4)]
    lines = [stream.__enter__().iter_lines() for stream in streams]
    for reader in lines:
        next(reader)  # text is flowing
    server.process.send_signal(signum)
    for reader, stream in zip(lines, streams):
        events = [line for line in reader if line]
        assert events[-1] == "data: [DONE]"  # within the grace period, whichever worker had it
        stream.__exit__(None, None, None)
    assert server.process.wait(30) == code
    assert all(gone(pid) for pid in workers)
    assert "Traceback" not in server.stderr and "stopping the others" not in server.stderr


@pytest.mark.parametrize("which,name", [(0, "worker 0"), (2, "engine 0")], ids=["worker", "engine"])
def test_a_process_that_dies_is_reported_and_the_server_exits_1(model, which, name):
    server = Server(model, "--workers", 2, "--grace-seconds", 1)
    processes = workers_of(server)
    os.kill(processes[which], signal.SIGKILL)
    assert server.process.wait(30) == 1
    assert all(gone(pid) for pid in processes)
    assert f"{name} (pid {processes[which]}) was killed by SIGKILL; stopping the others" in server.stderr
    assert f"charnn: error: the server stopped: {name}" in server.stderr and "Traceback" not in server.stderr


def test_a_stream_whose_engine_dies_ends_with_an_error_not_a_hang(model):
    server = Server(model, "--workers", 2, "--max-tokens", 100_000, "--grace-seconds", 5)
    engine = workers_of(server)[2]  # the first engine: a lone request goes there
    try:
        with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                          json={"prompt": "ROMEO:", "max_tokens": 100_000, "stream": True}) as response:
            lines = response.iter_lines()
            next(lines)  # text is flowing
            os.kill(engine, signal.SIGKILL)
            events = [line for line in lines if line.startswith("data: ")]
        assert '"server_error"' in events[-1] and "engine" in events[-1]
    finally:
        assert server.process.wait(30) == 1
    assert "Traceback" not in server.stderr


def test_requests_past_the_first_engines_fill_spill_to_the_next_with_the_same_text(model):
    # the first engine takes SPILL streams, the third request of 8 goes to the second: whichever engine
    # samples a request, its seed alone decides its text
    bodies = [{"prompt": "ROMEO:", "max_tokens": 400, "seed": seed, "n": 8, "temperature": 0.9} for seed in (1, 2, 3)]
    one = Server(model, "--workers", 1)
    try:
        expected = [[choice["text"] for choice in complete(one, **body)["choices"]] for body in bodies]
    finally:
        assert one.stop() == 143
    two = Server(model, "--workers", 2)
    try:
        streams = [httpx.stream("POST", two.url + "/v1/completions", timeout=60, json={**body, "stream": True})
                   for body in bodies]
        readers = [stream.__enter__().iter_lines() for stream in streams]
        texts = [[""] * 8 for _ in bodies]
        for reader, text in zip(readers, texts):
            for line in reader:
                if line.startswith("data: {"):
                    for choice in json.loads(line[6:])["choices"]:
                        text[choice["index"]] += choice["text"]
        for stream in streams:
            stream.__exit__(None, None, None)
        assert texts == expected
    finally:
        assert two.stop() == 143


def test_every_stream_routed_to_an_engine_is_given_back_however_its_request_ends(model):
    server = Server(model, "--workers", 2, "--max-tokens", 100_000)
    try:
        assert httpx.get(server.url + "/health").json()["engines"] == [0, 0]
        complete(server, prompt="ROMEO:", max_tokens=50, n=3)  # finished
        for _ in range(4):  # streams left halfway, by clients that hang up
            with httpx.stream("POST", server.url + "/v1/completions", timeout=30,
                              json={"prompt": "ROMEO:", "max_tokens": 100_000, "n": 8, "stream": True}) as response:
                next(response.iter_lines())
        bad = httpx.post(server.url + "/v1/completions", json={"prompt": "ROMEO:\u0001", "n": 4})
        assert bad.status_code == 400  # refused before any engine heard of it
        wait_for(lambda: httpx.get(server.url + "/health").json()["engines"] == [0, 0])
    finally:
        assert server.stop() == 143


def test_the_first_engine_fills_to_spill_then_the_least_busy_takes_each_request():
    tally = Tally(2, rows=4)
    rows = [2, 3]
    assert [tally.spill("routed", rows, 8, fill=16) for _ in range(3)] == [0, 0, 1]  # 8, 16, then 8 on the second
    assert tally.spill("routed", rows, 4, fill=16) == 1  # 16 against 8: the least busy
    tally.add("routed", -16, 2)
    assert tally.spill("routed", rows, 1, fill=16) == 0  # the first has room again
    assert [tally.value("routed", row) for row in rows] == [1, 12] and tally.total("routed") == 13


def test_a_server_killed_outright_leaves_no_workers(model):
    server = Server(model, "--workers", 2)
    workers = workers_of(server)
    server.process.kill()
    server.process.wait(10)
    deadline = time.monotonic() + 20  # each is sent SIGTERM as its parent dies, and stops as for a SIGTERM
    while not all(gone(pid) for pid in workers):
        assert time.monotonic() < deadline, "a worker outlived the server"
        time.sleep(0.1)


def test_a_model_that_cannot_load_is_one_line_from_many_workers(tmp_path):
    result = run_cli("serve", tmp_path / "nothing-here", "--workers", 2, "--port", 0)
    lines = result.stderr.decode().strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and lines[0].startswith("charnn: error:"), lines


def report_mask(index, sources, config, threads, shared, pipe, parent):
    """A worker's stand-in: what its process holds back as it starts, then as `work` would go on."""
    from charnn.serve import workers  # noqa: PLC0415

    at_start = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    workers.unblock_signals()
    pipe.send((sorted(at_start), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, []))))


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="no signal masks on this platform")
def test_workers_start_with_stop_signals_held_until_their_handlers_are_ready(monkeypatch):
    # else a SIGTERM from the server (another worker failed at once) could reach a worker still in
    # multiprocessing's start-up, which prints a traceback instead of ending quietly
    from charnn.serve import workers  # noqa: PLC0415

    monkeypatch.setattr(workers, "work", report_mask)
    sock = workers.listen("127.0.0.1", 0)
    pool = workers.Workers([None], ServeConfig(), [sock], ThreadChoice(None, "auto", 1))
    try:
        pool._start()
        assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, [])  # the parent's back
        at_start, after = pool.pipes[0].recv()
        assert {signal.SIGINT, signal.SIGTERM} <= set(at_start)
        assert signal.SIGINT not in after and signal.SIGTERM not in after
    finally:
        pool.stop()
        sock.close()


def test_an_engine_keeps_to_its_share_of_the_cores_while_another_has_streams():
    from charnn.serve.engines import EngineHost  # noqa: PLC0415

    tally = Tally(2, rows=4)
    host = EngineHost({}, [], tally, engines=[2, 3], cores=2)
    assert host.share() is None  # no engine has streams
    tally.add("routed", 5, 2)
    assert host.share() is None  # alone: its thread policy chooses among all the cores
    tally.add("routed", 1, 3)
    assert host.share() == 1  # two engines with streams: a core each


def test_a_limit_on_blas_threads_holds_whoever_sets_them():
    from charnn.model.engine import BlasThreads  # noqa: PLC0415

    pool = BlasThreads()
    if not pool.libraries:
        pytest.skip("numpy's BLAS is not one threadpoolctl can size")
    with pool:
        try:
            pool.limit(1)
            pool.set(2)  # what a prompt's read asks for, under the engine's policy
            assert {library.get_num_threads() for library in pool.libraries} == {1}
            pool.limit(None)
            pool.set(2)
            assert {library.get_num_threads() for library in pool.libraries} == {2}
        finally:
            pool.limit(None)


class FakeOpenBLAS:
    """What `BlasThreads` sees of OpenBLAS through threadpoolctl, counting the stops of its threads."""

    internal_api = "openblas"

    def __init__(self):
        self.stops = 0
        self.dynlib = self  # the library's own functions

    def blas_thread_shutdown_(self):
        self.stops += 1


def test_blas_threads_stop_only_when_no_thread_of_the_process_computes(monkeypatch):
    from charnn.model.engine import BlasThreads  # noqa: PLC0415

    monkeypatch.setattr(BlasThreads, "_working", 0)
    library = FakeOpenBLAS()
    one, two = BlasThreads(), BlasThreads()  # two models' batchers in one process
    one.libraries = two.libraries = [library]
    one.working()
    two.working()
    one.resting()
    assert library.stops == 0  # the other still steps: its products use the threads
    one.working()
    two.resting()
    assert library.stops == 0
    one.resting()
    assert library.stops == 1  # nothing computes: the threads stop spinning


def thread_cpu(pid: int) -> dict[str, int]:
    """Nanoseconds on a CPU of every thread of a process and of its children (the scheduler's own count,
    not clock ticks, which would round each process's by up to 10 ms)."""
    pids = [pid, *map(int, Path(f"/proc/{pid}/task/{pid}/children").read_text().split())]
    times = {}
    for task in (task for one in pids for task in Path(f"/proc/{one}/task").iterdir()):
        try:
            times[str(task)] = int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):
            pass  # a thread that ended meanwhile
    return times


def cpu_since(pid: int, before: dict[str, int]) -> float:
    """Seconds on a CPU since `before` of the threads that are there now."""
    return sum(ns - before.get(task, 0) for task, ns in thread_cpu(pid).items()) / 1e9


@pytest.mark.skipif(not Path("/proc/self/schedstat").exists(), reason="reads CPU time from Linux's /proc")
@pytest.mark.parametrize("workers", [1, 2])
def test_a_server_that_has_answered_burns_no_cpu_while_idle(workers):
    """The shipped model's products are large enough for two BLAS threads, which OpenBLAS leaves spinning
    for a tenth of a second after its last product unless they are stopped."""
    server = Server("english", "--workers", workers, "--threads", 2)
    try:
        for _ in range(3):
            complete(server, prompt="ROMEO:", max_tokens=300)
            before = thread_cpu(server.process.pid)
            time.sleep(0.6)
            assert cpu_since(server.process.pid, before) < 0.03
    finally:
        assert server.stop() == 143
