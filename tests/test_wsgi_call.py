"""One request through gunicorn's parser and a WSGI app (app/server/wsgi_call.py),
in-process: the answer in the connection's buffer, what the app finds in its
environ, when the connection may carry another request, and errors."""
from __future__ import annotations

import json

from app.environ import HOLDS_WRITES
from app.server.wsgi_call import head_limit
from app.v2 import batching
from standins import config, detached, wsgi_call

GET = b"GET /v2/health/live?x=1 HTTP/1.1\r\nHost: depot\r\n\r\n"


def app(environ, start_response):
    app.environ = environ
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"he", b"llo"]


def respond(call, data: bytes = GET, seat=None):
    """Parse and run one request; whether the connection is kept, and its bytes."""
    conn = detached()
    req = call.parse(conn, data)
    keep = call.respond(conn, req, seat)
    return keep, bytes(conn.out)


def test_an_answer_goes_whole_into_the_connections_buffer() -> None:
    call = wsgi_call(app)
    keep, out = respond(call)
    assert keep and out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nhello")
    assert call.worker.nr == 1 and call.log.access_lines == ["GET /v2/health/live 200 OK"]
    assert app.environ["QUERY_STRING"] == "x=1" and app.environ[HOLDS_WRITES] is False
    assert batching.SEAT not in app.environ


def test_the_app_is_told_whether_writes_may_be_held_and_its_seat() -> None:
    call = wsgi_call(app)
    call.worker.host = object()  # a worker with a host holds writes until idle
    seat = object()
    respond(call, seat=seat)
    assert app.environ[HOLDS_WRITES] is True and app.environ[batching.SEAT] is seat


def test_the_last_request_before_max_requests_closes_its_connection() -> None:
    call = wsgi_call(app)
    call.worker.max_requests = 2
    assert respond(call)[0]
    keep, out = respond(call)
    assert not keep and b"Connection: close\r\n" in out and not call.worker.alive


def test_an_app_that_fails_before_answering_gets_a_json_500() -> None:
    def failing(environ, start_response):
        raise RuntimeError("boom")

    call = wsgi_call(failing)
    keep, out = respond(call)
    head, body = out.split(b"\r\n\r\n")
    assert not keep and head.startswith(b"HTTP/1.1 500 ") and b"Connection: close" in head
    assert json.loads(body) == {"error": "internal error"}
    assert call.log.lines[-1][0] == "exception" and "boom" not in body.decode()


def test_an_app_that_fails_half_way_adds_nothing_to_its_answer() -> None:
    """Half a response is out: the connection ends with no 500 after it."""
    def failing(environ, start_response):
        start_response("200 OK", [("Content-Length", "8")])
        yield b"part"
        raise RuntimeError("boom")

    keep, out = respond(wsgi_call(failing))
    assert not keep and out.endswith(b"part") and b"500" not in out


def test_a_request_the_parser_refuses_gets_gunicorns_status() -> None:
    call = wsgi_call(app, limit_request_line=100)
    conn = detached()
    assert call.parse(conn, b"GET /" + b"a" * 200 + b" HTTP/1.1\r\n\r\n") is None
    assert bytes(conn.out).startswith(b"HTTP/1.1 414 URI Too Long\r\n")
    ((level, line),) = call.log.lines
    assert level == "warning" and "127.0.0.1: LimitRequestLine: Request Line is too large" in line


def test_the_head_limit_follows_gunicorns_limits() -> None:
    assert head_limit(config()) == 4094 + 100 * (8190 + 2) + 4
    assert head_limit(config(limit_request_line=100, limit_request_fields=2,
                             limit_request_field_size=50)) == 100 + 2 * 52 + 4
