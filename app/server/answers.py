"""The answers the server writes itself, without the app: a failure as the
same ``{"error": "..."}`` JSON body the app writes, in raw HTTP bytes.

The worker answers on its own when a request never reaches the app: it
cannot be framed (a body over the limit, broken chunks), its client was too
slow, or gunicorn's parser refused its head. Each is a
:class:`runtimes.base.Failure` with its status, written here and only here,
and the connection ends after it: where the next request would start is
not known.
"""
from __future__ import annotations

import orjson

from runtimes.base import Failure

REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
           413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented"}


def status_line(status: int) -> str:
    """``"408 Request Timeout"``: a status as HTTP writes it."""
    return f"{status} {REASONS.get(status, 'Error')}"


def error_answer(error: Failure) -> bytes:
    """A complete JSON error answer that ends its connection."""
    body = orjson.dumps({"error": error.message})
    return (f"HTTP/1.1 {status_line(error.status)}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1") + body
