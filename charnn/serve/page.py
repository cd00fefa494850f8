"""The page at `/` and what it needs from the server: its files (`page.html`, `page.js`, `page.css`,
`favicon.svg`), the headers they are sent with, and the model card `GET /v1/models/{id}` adds to
OpenAI's fields for it.

The page runs no inline script: the server's limits reach it as a JSON data block, which a browser
never executes, so its Content-Security-Policy can allow this server's own files and nothing else.
"""

from __future__ import annotations

import json
import math
from importlib import resources

from ..config import ServeConfig
from ..model.spec import parameter_count
from ..units import bits
from .batcher import Batcher

# the page's own files, by path: (file, media type); /favicon.ico for clients that ask without reading the page
FILES = {"/page.js": ("page.js", "text/javascript"), "/page.css": ("page.css", "text/css"),
         "/favicon.svg": ("favicon.svg", "image/svg+xml"), "/favicon.ico": ("favicon.svg", "image/svg+xml")}
# the page runs this server's files only: no inline script, nothing from elsewhere, never in another site's frame
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
SETTINGS = "{}<!--SETTINGS-->"  # where page.html takes the server's limits


def read(file: str) -> bytes:
    return resources.files(__package__).joinpath(file).read_bytes()


def page(config: ServeConfig) -> str:
    """The page, with the server's limits in its JSON data block ('<' escaped: no text can close it)."""
    settings = {"needs_key": config.api_key is not None, "max_tokens": config.default_max_tokens,
                "max_tokens_limit": config.max_tokens, "max_n": config.max_n}
    return read("page.html").decode("utf-8").replace(SETTINGS, json.dumps(settings).replace("<", "\\u003c"))


def static_files() -> dict:
    """A FastAPI route for each of the page's files, by path."""
    from fastapi.responses import Response  # noqa: PLC0415 (the serve extra)

    def route(content: bytes, media_type: str):
        async def answer():
            return Response(content, media_type=media_type, headers={**PAGE_HEADERS, "Cache-Control": "no-cache"})
        return answer

    return {path: route(read(file), media_type) for path, (file, media_type) in FILES.items()}


def model_card(batcher: Batcher) -> dict:
    """What a served model is, beside OpenAI's fields: its shape, its vocabulary, and the validation loss
    its file records (nats and bits per character; None when there is none)."""
    config, loss, step = batcher.engine.config, batcher.records.get("val_loss"), batcher.records.get("step")
    loss = loss if isinstance(loss, float) and math.isfinite(loss) else None
    return {"cell": config.cell, "num_layers": config.num_layers, "hidden_size": config.hidden_size,
            "vocab_size": config.vocab_size, "vocab_mode": batcher.vocab.mode, "parameters": parameter_count(config),
            "step": step if isinstance(step, int) and not isinstance(step, bool) else None,
            "val_loss": loss, "val_bpc": None if loss is None else bits(loss)}
