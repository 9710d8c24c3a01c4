"""The response Depot answers with: werkzeug's, handed to the server as it
stands when nothing in it needs rewriting.

On every answer werkzeug's ``Response`` readies itself for the server: it
copies its headers to make ``Location`` and ``Content-Location`` absolute,
drops the body a status or a HEAD request forbids, works out a missing
``Content-Length``, and wraps the body in an iterator that closes it. A
body given whole as bytes has its ``Content-Length`` from the start, and
Depot's answers carry no ``Location``: a 200 answer to anything but HEAD
needs none of that, and goes out as it is. That is 42,000 of the 1.6
million instructions a one-row request costs (bench/instructions.py).
"""
from __future__ import annotations

from typing import Any

import orjson
from flask import Response


class WholeResponse(Response):
    """A response whose body is given whole, as bytes (or text), and which
    sets no ``Location`` or ``Content-Location`` header."""

    def get_wsgi_response(self, environ: dict[str, Any]) -> tuple[Any, str, list]:
        if (self.status_code == 200 and type(self.response) is list and not self._on_close
                and environ["REQUEST_METHOD"] != "HEAD"):
            return self.response, self.status, self.headers.to_wsgi_list()
        return super().get_wsgi_response(environ)


def json_response(payload: object, status: int = 200) -> Response:
    return WholeResponse(orjson.dumps(payload), status=status, mimetype="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)
