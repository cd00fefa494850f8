"""`charnn serve`: models over HTTP, an OpenAI-style completions API and a page: the API's shapes and
checks, many requests stepped as one batch (without a web framework), the FastAPI app, and the defences of
a port (Host and Origin checks, deadlines and a connection limit).

May import: charnn's top-level modules, `charnn.runtime`, `charnn.data`, `charnn.model`, `charnn.runs` and
`charnn.generate`. FastAPI and uvicorn are imported only when a server is made.
"""
