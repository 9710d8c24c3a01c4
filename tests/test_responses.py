"""app.web.responses and app.web.sessions: Flask's per-request work Depot skips, and
the answers that must not change for it (in-process, then over real HTTP)."""
from __future__ import annotations

import pytest
from flask import Flask, session
from werkzeug.test import EnvironBuilder

import rawhttp
from app.web.responses import WholeResponse
from app.web.sessions import NoSessions
from conftest import v2_body


def served(response: WholeResponse, method: str = "POST") -> tuple[str, dict, bytes]:
    """What a WSGI server gets: status, headers, the body it writes."""
    got = {}
    environ = EnvironBuilder(method=method).get_environ()
    body = b"".join(response(environ, lambda status, headers: got.update(
        status=status, headers=dict(headers))))
    return got["status"], got["headers"], body


def test_a_whole_200_answer_goes_out_as_werkzeug_would_send_it():
    status, headers, body = served(WholeResponse(b'{"a":1}', content_type="application/json"))
    assert (status, body) == ("200 OK", b'{"a":1}')
    assert headers == {"Content-Type": "application/json", "Content-Length": "7"}


def test_a_body_replaced_later_keeps_its_length_right():
    response = WholeResponse(b'{"a":1}', content_type="application/json")
    response.set_data(b"compressed!")  # as app.web.api does for a client taking gzip
    _, headers, body = served(response)
    assert body == b"compressed!" and headers["Content-Length"] == "11"


@pytest.mark.parametrize("status, method", [(204, "POST"), (304, "GET"), (200, "HEAD")])
def test_what_must_not_have_a_body_still_loses_it(status, method):
    _, headers, body = served(WholeResponse(b'{"a":1}', status=status,
                                            content_type="application/json"), method)
    assert body == b""
    if status == 204:
        assert "Content-Length" not in headers


def test_close_callbacks_still_run():
    closed = []
    response = WholeResponse(b"x")
    response.call_on_close(lambda: closed.append(True))
    iterable = response(EnvironBuilder(method="POST").get_environ(), lambda *a: None)
    assert b"".join(iterable) == b"x"
    iterable.close()
    assert closed == [True]


def test_one_null_session_that_refuses_writes():
    app = Flask(__name__)
    app.session_interface = NoSessions()
    seen = []

    @app.get("/")
    def index():
        seen.append(session._get_current_object())
        assert session.get("user") is None  # reading works, as without a secret key
        session["user"] = "x"  # raises, as without a secret key
        return "unreachable"

    client = app.test_client()
    for _ in range(2):
        assert client.get("/").status_code == 500
    assert len(seen) == 2 and seen[0] is seen[1] and dict(seen[0]) == {}
    assert "Set-Cookie" not in client.get("/").headers


def test_real_answers_are_whole_and_head_has_no_body(server, digits):
    sock = rawhttp.connect(server)
    f = sock.makefile("rb")
    try:
        sock.sendall(rawhttp.request("POST", "/v2/models/mnist-svm/infer", v2_body(digits[:3]))
                     + rawhttp.request("GET", "/v2/health/ready")
                     + rawhttp.request("HEAD", "/v2/health/ready")
                     + rawhttp.request("GET", "/v2/health/live"))
        status, headers, body = rawhttp.read_response(f)
        assert status == 200 and headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(body) and body.startswith(b"{")
        ready = rawhttp.read_response(f)
        assert ready[0] == 200 and ready[2] == b'{"ready":true}'
        # HEAD: the headers GET would send, no body; the next answer follows at once
        line = f.readline()
        assert line.split()[1] == b"200"
        head = {}
        while (line := f.readline()) != b"\r\n":
            name, value = line.decode().split(":", 1)
            head[name.strip().lower()] = value.strip()
        assert head["content-length"] == str(len(ready[2]))
        assert rawhttp.read_response(f)[2] == b'{"live":true}'
    finally:
        f.close()
        sock.close()
