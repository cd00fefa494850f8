"""What `charnn serve` checks before a request reaches a route: the Host it names, the web page it
comes from, and that a POST body is JSON.

A page on any web site can make a browser send requests to a server on the user's own machine. Two
checks keep it out: the Host header must name this server (loopback names, the address it listens
on, `--allow-host`), which defeats DNS rebinding (a hostile name resolving to 127.0.0.1), and a
request a browser sends from another origin (its Origin header) is refused unless that origin was
given with `--cors-origin`, which also answers its CORS preflights. Requiring `application/json` for
POST bodies means no page can send one without a preflight. HEAD is answered wherever GET is.
"""

from __future__ import annotations

import json
from typing import Iterable

from ..config import LOOPBACK_HOSTS
from .completions import ApiError

WILDCARDS = ("0.0.0.0", "::", "")  # listening on every address names none of them
PREFLIGHT_SECONDS = 600  # how long a browser may remember an answered preflight


def host_name(value: str) -> str:
    """The name in a Host header, without its port: 'localhost:8000' -> 'localhost', '[::1]:80' -> '::1'."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def allowed_hosts(listen_host: str, extra: Iterable[str]) -> frozenset[str]:
    names = {*LOOPBACK_HOSTS, *(host_name(name) for name in extra)}
    if listen_host not in WILDCARDS:
        names.add(host_name(listen_host))
    return frozenset(names)


class Guard:
    """ASGI middleware: refuses what fails the checks (OpenAI's error shape) and passes the rest on."""

    def __init__(self, app, hosts: frozenset[str], origins: Iterable[str] = ()):
        self.app, self.hosts, self.origins = app, hosts, frozenset(origin.lower() for origin in origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            cross_origin = self.check(scope, headers)
        except ApiError as err:
            return await respond(send, err.status, err.body())
        origin = headers.get("origin", "")
        if cross_origin and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            return await respond(send, 204, None, self.cors(origin) + [
                (b"access-control-allow-methods", b"GET, HEAD, POST"),
                (b"access-control-allow-headers", b"authorization, content-type"),
                (b"access-control-max-age", str(PREFLIGHT_SECONDS).encode())])
        if scope["method"] == "HEAD":  # the route for GET answers; the server sends no body for HEAD
            scope = {**scope, "method": "GET"}
        if cross_origin:
            send = self.with_headers(send, self.cors(origin))
        await self.app(scope, receive, send)

    def check(self, scope, headers: dict) -> bool:
        """Whether the request is an allowed cross-origin one; ApiError if it is refused."""
        host = headers.get("host")
        if host is None or ("*" not in self.hosts and host_name(host) not in self.hosts):
            shown = "no Host header" if host is None else f"Host {host[:100]!r}"
            raise ApiError(400, f"{shown} is not this server's name; start it with --allow-host NAME to "
                                "take requests for another name", code="host_not_allowed")
        origin = headers.get("origin")
        cross_origin = origin is not None and origin.lower() != f"{scope.get('scheme', 'http')}://{host}".lower()
        if cross_origin and origin.lower() not in self.origins:
            raise ApiError(403, f"requests from web pages at {origin[:100]!r} are refused; start the server with "
                                "--cors-origin ORIGIN to let that origin's pages in", code="origin_not_allowed")
        if scope["method"] == "POST" and media_type(headers.get("content-type", "")) != "application/json":
            raise ApiError(415, "the body must be JSON, sent with 'Content-Type: application/json'",
                           code="unsupported_media_type")
        return cross_origin

    @staticmethod
    def cors(origin: str) -> list[tuple[bytes, bytes]]:
        return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]

    @staticmethod
    def with_headers(send, extra: list[tuple[bytes, bytes]]):
        async def sending(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)
        return sending


def media_type(content_type: str) -> str:
    """'application/json; charset=utf-8' -> 'application/json'."""
    return content_type.split(";", 1)[0].strip().lower()


async def respond(send, status: int, body: dict | None, headers: list[tuple[bytes, bytes]] = ()) -> None:
    content = b"" if body is None else json.dumps(body).encode()
    kind = [(b"content-type", b"application/json")] if body is not None else []
    await send({"type": "http.response.start", "status": status,
                "headers": [*kind, (b"content-length", str(len(content)).encode()), *headers]})
    await send({"type": "http.response.body", "body": content})
