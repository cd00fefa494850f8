"""`charnn serve` against a hostile network: partial requests, clients that never read, floods of
connections, foreign Hosts and Origins, requests arriving together, and bytes no request should hold.
Real servers on loopback ports; raw sockets, every wait bounded to a few seconds."""

import ctypes
import json
import os
import re
import resource
import signal
import socket
import threading
import time

import httpx
import pytest

from test_serve import Server, complete, error_of, wait_for

FAST = ("--header-timeout", 1, "--body-timeout", 1, "--write-timeout", 1)


@pytest.fixture(scope="module")
def model(workdir):
    return workdir["run"]


@pytest.fixture(scope="module")
def server(model):
    """One request in flight at a time, short deadlines, a few connections, one more name and origin; two
    workers, so that every defence is held by each and every limit by the server as a whole."""
    server = Server(model, *FAST, "--workers", 2, "--max-concurrent", 1, "--max-connections", 12, "--max-tokens", 10_000_000,
                    "--allow-host", "charnn.test", "--cors-origin", "http://localhost:3000")
    yield server
    assert server.stop() == 143
    assert "Traceback" not in server.stderr and "ERROR" not in server.stderr, server.stderr


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def connect(server, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(5)
    sock.connect(address(server))
    return sock


def read_to_close(sock: socket.socket, seconds: float = 5) -> bytes:
    """Everything the server sends until it closes the connection (an error if it does not in time)."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return data


def request_bytes(body: dict | bytes, host: str = "127.0.0.1", headers: str = "") -> bytes:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return (f"POST /v1/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n{headers}"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def health(server) -> dict:
    return httpx.get(server.url + "/health", timeout=5).json()


# --- item 4: partial requests and floods of connections ------------------------------------------


@pytest.mark.parametrize("sent,phase", [
    (b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n", "headers"),
    (request_bytes(b'{"prompt": "ROMEO:", "max_tokens": 5}')[:-10], "body"),
    (b"", "headers"),
], ids=["half-the-headers", "half-the-body", "nothing"])
def test_a_request_that_stops_arriving_is_answered_408_and_closed(server, sent, phase):
    sock = connect(server)
    sock.sendall(sent)
    start = time.monotonic()
    response = read_to_close(sock)
    assert status_of(response) == 408 and time.monotonic() - start < 4
    error = json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "request_timeout" and phase in error["message"]
    wait_for(lambda: health(server)["slots"] == 0, 5)


def test_headers_sent_a_byte_at_a_time_still_meet_the_deadline(server):
    sock = connect(server)
    start = time.monotonic()
    with pytest.raises(OSError):  # the server closes it while bytes are still coming
        for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            sock.send(bytes([byte]))
            time.sleep(0.05)
    assert status_of(read_to_close(sock)) == 408 and time.monotonic() - start < 4


@pytest.mark.parametrize("sent", [
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Filler: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /" + b"a" * 20_000,  # a request line that never ends
    b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 3_000,  # many small headers
], ids=["one-long-header", "endless-request-line", "many-headers"])
def test_a_request_whose_head_passes_16_kib_is_refused_at_once(server, sent):
    sock = connect(server)
    sock.sendall(sent)
    start = time.monotonic()
    response = read_to_close(sock)
    assert status_of(response) == 431 and time.monotonic() - start < 0.9  # not the header deadline's 408
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "headers_too_large"


def test_a_body_past_16_kib_is_not_a_head_and_bytes_that_are_not_http_are_400(server):
    body = b'{"prompt": "ROMEO:", "max_tokens": 3' + b" " * 30_000 + b"}"  # under --max-body-bytes
    sock = connect(server)
    sock.sendall(request_bytes(body, headers="Connection: close\r\n"))
    response = read_to_close(sock)
    assert status_of(response) == 200, response[:300]
    sock = connect(server)
    sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64))  # a TLS hello
    response = read_to_close(sock)
    assert status_of(response) == 400 and b"invalid_request" in response


def test_pipelined_requests_are_answered_in_order(server):
    sock = connect(server)
    sock.sendall(request_bytes({"prompt": "ROMEO:", "max_tokens": 4, "seed": 1})
                 + b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    response = read_to_close(sock)
    first, second = response.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"200") and b'"text_completion"' in first
    assert second.startswith(b"200") and b'"status":"ok"' in second.replace(b" ", b"")


def test_connections_past_the_limit_are_refused_and_service_comes_back(server):
    held = [connect(server) for _ in range(12)]  # open, saying nothing
    time.sleep(0.2)
    extra = connect(server)
    response = read_to_close(extra, 2)  # refused at once
    assert status_of(response) == 503 and b"server_busy" in response
    for sock in held:  # each then runs out of time for its headers
        assert status_of(read_to_close(sock)) == 408
    assert health(server)["status"] == "ok"


def test_out_of_file_descriptors_refuses_quietly_and_recovers(model):
    limit = lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (80, 80))  # noqa: E731
    server = Server(model, *FAST, "--workers", 2, preexec_fn=limit)
    try:
        socks = [connect(server) for _ in range(150)]
        for sock in socks:
            sock.send(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        answers = [read_to_close(sock, 6) for sock in socks]
        assert all(answer == b"" or status_of(answer) in (408, 503) for answer in answers)
        assert health(server)["status"] == "ok"
    finally:
        assert server.stop() == 143
    log = [line for line in server.stderr.splitlines() if line.startswith("charnn: serve:")]
    assert "Traceback" not in server.stderr and len(log) <= 4, server.stderr  # a line of each kind a worker


# --- item 3: clients that never read ---------------------------------------------------------------


def test_a_client_that_stops_reading_is_paused_then_dropped(server):
    sock = connect(server, rcvbuf=4096)  # small buffers: the server's writes back up at once
    try:
        sock.sendall(request_bytes({"prompt": "ROMEO:", "max_tokens": 10_000_000, "n": 4, "stream": True}))
        wait_for(lambda: health(server)["paused"] == 1, 10)  # nothing is drawn while nobody reads
        assert health(server)["streams"] == 4
        wait_for(lambda: health(server)["slots"] == 0 and health(server)["requests"] == 0, 6)  # --write-timeout 1
        cut = read_to_close(sock)  # dropped: what it had been sent, then the end, without [DONE]
        assert cut.startswith(b"HTTP/1.1 200") and b"data: [DONE]" not in cut
    finally:
        sock.close()


def test_a_slow_reader_gets_all_of_its_text(server):
    body = {"prompt": "ROMEO:", "max_tokens": 3000, "n": 4, "seed": 9}
    whole = complete(server, **body)["choices"]
    sock = connect(server, rcvbuf=4096)
    sock.sendall(request_bytes({**body, "stream": True}))
    data = b""
    while b"data: [DONE]" not in data:  # a little at a time: paused and resumed, never dropped
        data += sock.recv(2048)
        time.sleep(0.001)
    sock.close()
    texts = ["", "", "", ""]
    for event in re.findall(rb"data: (\{.*?\})\n\n", data):  # each event is one chunk of the chunked body
        for choice in json.loads(event)["choices"]:
            texts[choice["index"]] += choice["text"]
    assert texts == [choice["text"] for choice in whole]


# --- item 5: Host and Origin -----------------------------------------------------------------------


@pytest.mark.parametrize("host,status", [("attacker.example", 400), ("127.0.0.1.nip.io", 400),
                                         ("localhost:1234", 200), ("[::1]", 200), ("CHARNN.test:80", 200)])
def test_only_this_servers_names_are_taken(server, host, status):
    response = httpx.get(server.url + "/v1/models", headers={"Host": host}, timeout=5)
    assert response.status_code == status, response.text
    if status == 400:
        assert error_of(response, 400)["code"] == "host_not_allowed" and "run" not in response.text


def test_pages_from_other_origins_are_refused(server):
    simple = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "a", "max_tokens": 2}', timeout=5,
                        headers={"Content-Type": "text/plain", "Origin": "http://evil.example"})
    assert error_of(simple, 403)["code"] == "origin_not_allowed"
    text_plain = httpx.post(server.url + "/v1/completions", content=b'{"prompt": "a"}', timeout=5,
                            headers={"Content-Type": "text/plain"})
    assert error_of(text_plain, 415)["code"] == "unsupported_media_type"
    same = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=5,
                      headers={"Origin": server.url})  # the page at / calls its own server
    assert same.status_code == 200 and "access-control-allow-origin" not in same.headers


def test_a_cors_origin_is_let_in_and_its_preflight_answered(server):
    origin = {"Origin": "http://localhost:3000"}
    preflight = httpx.options(server.url + "/v1/completions", timeout=5, headers={
        **origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    answer = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, headers=origin,
                        timeout=5)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    other = httpx.options(server.url + "/v1/completions", timeout=5, headers={
        "Origin": "http://localhost:3001", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers


def test_no_answer_repeats_the_host_header(server):
    for path in ("/v1/models/", "/health/", "/v1/completions/"):
        response = httpx.get(server.url + path, headers={"Host": "localhost"}, timeout=5)
        assert response.status_code == 404 and "location" not in response.headers


def test_head_is_answered_wherever_get_is(server):
    for path in ("/", "/health", "/v1/models"):
        head, get = httpx.head(server.url + path, timeout=5), httpx.get(server.url + path, timeout=5)
        assert head.status_code == get.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == get.headers["content-type"]


# --- item 6: --max-concurrent, exactly ---------------------------------------------------------


def test_requests_arriving_together_get_exactly_the_limit(server):
    socks = [connect(server) for _ in range(10)]
    gate = threading.Barrier(len(socks))

    def send(sock):
        gate.wait()
        sock.sendall(request_bytes({"prompt": "ROMEO:", "max_tokens": 10_000_000, "stream": True}))

    threads = [threading.Thread(target=send, args=(sock,)) for sock in socks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5)
    statuses = [status_of(sock.recv(200)) for sock in socks]
    assert sorted(statuses) == [200] + [429] * 9  # --max-concurrent 1
    for sock in socks:
        sock.close()
    wait_for(lambda: health(server)["slots"] == 0, 5)


def test_a_slot_is_free_the_moment_its_request_ends_or_its_client_leaves(server):
    for _ in range(20):
        sock = connect(server)
        sock.sendall(request_bytes({"prompt": "ROMEO:", "max_tokens": 10_000_000, "stream": True}))
        assert status_of(sock.recv(200)) == 200
        sock.close()
        assert complete(server, prompt="ROMEO:", max_tokens=3)["choices"][0]["finish_reason"] == "length"


# --- item 7: no request is a 500 -------------------------------------------------------------------


@pytest.mark.parametrize("body,param", [
    (b'{"prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}", None),
    (b'{"prompt": "ROMEO \\ud800"}', "prompt"),
    (b'{"\\udc00": 1}', "\\udc00"),
    (b'{"stop": ["\\ud800"]}', "stop"),
], ids=["nested-3000-deep", "surrogate-in-prompt", "surrogate-in-a-key", "surrogate-in-stop"])
def test_bodies_a_parser_chokes_on_are_400(server, body, param):
    response = httpx.post(server.url + "/v1/completions", content=body, timeout=5,
                          headers={"Content-Type": "application/json"})
    assert error_of(response, 400)["param"] == param


def test_an_api_key_of_any_bytes_is_checked_not_a_500(model):
    key = b"s3cret-\xff\xfe"  # not UTF-8: an environment variable may hold any bytes
    server = Server(model, env={"CHARNN_API_KEY": key})
    try:
        url = server.url + "/v1/models"
        assert error_of(httpx.get(url, headers={"Authorization": b"Bearer wrong"}, timeout=5), 401)
        assert httpx.get(url, headers={"Authorization": b"Bearer " + key}, timeout=5).status_code == 200
    finally:
        assert server.stop() == 143


# --- the log, and TCP_NODELAY ---------------------------------------------------------------------


def test_clients_leaving_and_the_grace_period_ending_leave_no_traceback(model):
    server = Server(model, *FAST, "--max-tokens", 10_000_000, "--grace-seconds", 0.5)
    try:
        gone = connect(server)  # leaves halfway through its body
        gone.sendall(request_bytes({"prompt": "ROMEO:"})[:-5])
        gone.close()
        streaming = connect(server)  # leaves mid-stream
        streaming.sendall(request_bytes({"prompt": "ROMEO:", "max_tokens": 10_000_000, "stream": True}))
        streaming.recv(4096)
        streaming.close()
        held = connect(server)  # still streaming when the grace period ends
        held.sendall(request_bytes({"prompt": "ROMEO:", "max_tokens": 10_000_000, "stream": True}))
        held.recv(4096)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(5) == 143
        held.close()
    finally:
        if server.process.poll() is None:
            server.process.kill()
    assert "Traceback" not in server.stderr and "ERROR" not in server.stderr, server.stderr


def test_accepted_connections_send_without_delay(server):
    """TCP_NODELAY on the server's side of a connection: looked at through a copy of its socket, in
    whichever of the server's processes (it or a worker) holds it."""
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.recv(4096)
    try:
        pid = server.process.pid
        workers = open(f"/proc/{pid}/task/{pid}/children").read().split()
        found = [nodelay_of(process, sock.getsockname()) for process in [pid, *map(int, workers)]]
        assert [flag for flag in found if flag is not None] == [1], "the server's side of the connection"
    finally:
        sock.close()


def nodelay_of(pid: int, peer) -> int | None:
    """TCP_NODELAY of the socket in process `pid` whose peer is `peer` (None if it has none)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        for name in os.listdir(f"/proc/{pid}/fd"):
            if not os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                continue
            fd = libc.syscall(438, pidfd, int(name), 0)  # pidfd_getfd
            if fd < 0:
                pytest.skip(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
            copy = socket.socket(fileno=fd)
            try:
                if copy.type == socket.SOCK_STREAM and copy.getpeername() == peer:
                    return copy.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError:
                pass
            finally:
                copy.close()
        return None
    finally:
        os.close(pidfd)


def test_requests_that_end_leave_nothing_on_their_keep_alive_connection():
    """A connection holds a callback for each request in flight on it (its slot; its streams, which hold
    its text) and forgets each as the request ends: a client sending request after request over one
    connection must not make the server keep them all."""
    from charnn.serve.connections import Connection  # noqa: PLC0415
    from charnn.serve.server import Slot  # noqa: PLC0415
    from charnn.serve.tally import Tally  # noqa: PLC0415

    class Served:  # what a slot needs of the server
        tally = Tally()

    connection = Connection.__new__(Connection)  # no transport: its callbacks alone
    connection.lost = []
    for _ in range(1000):
        assert Served.tally.take("slots", 1)
        slot = Slot(Served, connection)
        forget = connection.when_lost(lambda: None)  # a request's streams
        forget()
        slot.free()
    assert connection.lost == [] and Served.tally.total("slots") == 0
    assert Served.tally.take("slots", 1)
    slot = Slot(Served, connection)  # a request in flight when its client leaves: freed then, once
    for callback in list(connection.lost):
        callback()
    slot.free()
    assert Served.tally.total("slots") == 0 and not slot.held
