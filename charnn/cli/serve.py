"""`charnn serve`: options into a ServeConfig; the library serves until SIGTERM or Ctrl-C."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..config import ServeConfig
from ..runtime.threads import resolve_threads
from .app import EXIT_CODES_HELP, QuietFlag, ThreadsOption, command, default, given, say, stderr

LIMITS = "Limits"
NETWORK = "Network"


def _option(text: str, name: str, panel: str | None = None, **extra):
    return typer.Option(help=f"{text} {default(ServeConfig, name)}", rich_help_panel=panel, show_default=False,
                        **extra)


@command(epilog=EXIT_CODES_HELP)
def serve(
    models: Annotated[Optional[list[str]], typer.Argument(
        help="Run directories, checkpoints or .safetensors files to serve; clients name a model by its run "
             "directory (or file) name, and the first is the default. \\[default: the newest run]",
        show_default=False)] = None,
    host: Annotated[Optional[str], _option(
        "Address to listen on; anything but loopback needs --api-key.", "host")] = None,
    port: Annotated[Optional[int], _option("Port to listen on; 0 picks a free one.", "port")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        help="Require 'Authorization: Bearer KEY' on /v1 requests. \\[default: none on loopback]",
        envvar="CHARNN_API_KEY", show_default=False, show_envvar=True)] = None,
    max_prompt_chars: Annotated[Optional[int], _option("Longest prompt, in characters.", "max_prompt_chars",
                                                       LIMITS)] = None,
    max_tokens: Annotated[Optional[int], _option("Most characters one request may ask for, per choice.",
                                                 "max_tokens", LIMITS)] = None,
    default_max_tokens: Annotated[Optional[int], _option("Characters per choice when a request gives no max_tokens.",
                                                         "default_max_tokens", LIMITS)] = None,
    max_n: Annotated[Optional[int], _option("Most choices (n) per request.", "max_n", LIMITS)] = None,
    max_concurrent: Annotated[Optional[int], _option(
        "Requests in flight at once; more are answered 429 with Retry-After.", "max_concurrent", LIMITS)] = None,
    max_body_bytes: Annotated[Optional[int], _option("Largest request body, in bytes.", "max_body_bytes",
                                                     LIMITS)] = None,
    grace_seconds: Annotated[Optional[float], _option(
        "On SIGTERM or Ctrl-C, how long streams in flight may take to finish.", "grace_seconds", LIMITS)] = None,
    allow_host: Annotated[Optional[list[str]], typer.Option(
        help="Also take requests whose Host header names NAME (repeatable; * for any): loopback names and "
             "--host are taken; any other is refused, which keeps DNS-rebinding pages out.",
        metavar="NAME", rich_help_panel=NETWORK, show_default=False)] = None,
    cors_origin: Annotated[Optional[list[str]], typer.Option(
        help="Let web pages from ORIGIN (e.g. http://localhost:3000) call the API, answering their CORS "
             "preflights (repeatable); requests from other pages are refused.", metavar="ORIGIN",
        rich_help_panel=NETWORK, show_default=False)] = None,
    header_timeout: Annotated[Optional[float], _option(
        "Seconds for a request's headers to arrive; then 408 and the connection closes.", "header_timeout",
        NETWORK)] = None,
    body_timeout: Annotated[Optional[float], _option(
        "Seconds for a request's body to arrive once its headers are in.", "body_timeout", NETWORK)] = None,
    write_timeout: Annotated[Optional[float], _option(
        "A client that reads nothing for this many seconds is dropped; its stream pauses meanwhile.",
        "write_timeout", NETWORK)] = None,
    max_connections: Annotated[Optional[int], _option(
        "Connections open at once (held under the open-file limit); more are answered 503 and closed.",
        "max_connections", NETWORK)] = None,
    chat_template: Annotated[Optional[Path], typer.Option(
        help="How /v1/chat/completions writes messages as a prompt: a JSON file of each role's prefix and suffix, "
             "where the reply starts and the strings that end it (see the README). \\[default: 'User:' and "
             "'Assistant:' turns, as a play is set down]", metavar="FILE", show_default=False)] = None,
    workers: Annotated[Optional[str], _option(
        "Processes serving the port, and as many engine processes sampling for all of them (1: one process "
        "doing both); auto: one per core (per --threads threads, if fixed). --max-concurrent and "
        "--max-connections count all of them.",
        "workers", metavar="N|auto")] = None,
    threads: ThreadsOption = None,
    quiet: QuietFlag = False,
) -> None:
    """Serve models over HTTP: OpenAI-style completions and chat completions, and a page to try them at /.

    Requests in flight are sampled together, one batched step for all of them. SIGTERM or Ctrl-C
    stops accepting connections and lets streams in flight finish (--grace-seconds).
    """
    config = ServeConfig(**given(host=host, port=port, api_key=api_key or None, max_prompt_chars=max_prompt_chars,
                                 max_tokens=max_tokens, default_max_tokens=default_max_tokens, max_n=max_n,
                                 max_concurrent=max_concurrent, max_body_bytes=max_body_bytes,
                                 grace_seconds=grace_seconds, header_timeout=header_timeout,
                                 body_timeout=body_timeout, write_timeout=write_timeout,
                                 max_connections=max_connections, allow_hosts=tuple(allow_host or ()) or None,
                                 cors_origins=tuple(cors_origin or ()) or None, threads=threads,
                                 chat_template=chat_template, workers=workers)).validate()
    resolve_threads(config.threads)  # a mistake in --threads is answered before a model loads
    from ..serve.server import serve as run_server  # noqa: PLC0415 (numpy, FastAPI and uvicorn: only to serve)

    console = stderr()

    def ready(shapes: dict, url: str, workers: int) -> None:
        for name, shape in shapes.items():
            say(console, f"charnn: model {name}: {shape.num_layers}x{shape.hidden_size} {shape.cell.upper()}",
                quiet=quiet)
        processes = f"; {workers} worker processes and {workers} engines" if workers > 1 else ""
        say(console, f"charnn: serving at {url} (API at {url}/v1, a page at {url}/{processes}); Ctrl-C stops",
            quiet=quiet)

    run_server(list(models) if models else [None], config, ready)
