"""`charnn serve`: models over HTTP, OpenAI-style completions and chat completions APIs, and a page.

Owns: the request and answer shapes of the API and their checks (`completions`; `chat` over it, with the
template that writes messages as a prompt), many requests stepped as one batch (`batcher`, without a
web framework), their text handed to asyncio and answered as plain ASGI (`relay`), the server and its
FastAPI app for the rest (`server`), the page at `/`
(`page`: `page.html`, `page.js`, `page.css`, and the model card it shows), the defences of a port: Host
and Origin checks (`guard`), deadlines and a connection limit (`connections`), and the worker processes
that share a port (`workers`), the engine processes that sample for them (`engines`) and the counts
they share (`tally`).

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data`, `charnn.model`, `charnn.runs` and
`charnn.generate`. FastAPI and uvicorn are imported only when a server is made.
"""
