"""app.errors and its renderers in-process: one JSON body for every failure,
each message worded by its class from its fields, no stack traces."""
from __future__ import annotations

import logging

import orjson
import pytest
from flask import Flask

from app import errors as depot_errors
from app.errors import (BodyTooLarge, Malformed, MalformedChunks, ModelBusy, ModelChanging,
                        ModelNotFound, ModelNotReady, Unauthorized)
from app.server.answers import error_answer
from app.web import errors
from runtimes.base import Failure, InputRejected


def make_app() -> Flask:
    app = Flask(__name__)
    errors.init_app(app)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    @app.get("/missing")
    def missing():
        raise depot_errors.ModelNotFound("x")

    return app


def test_unexpected_errors_are_500_with_a_logged_request_id(caplog):
    client = make_app().test_client()
    with caplog.at_level(logging.ERROR, logger="depot"):
        r = client.get("/boom")
    assert r.status_code == 500
    message = r.get_json()["error"]
    assert message.startswith("internal error (id ") and "secret" not in message
    request_id = message.removeprefix("internal error (id ").rstrip(")")
    assert any(request_id in rec.getMessage() for rec in caplog.records)
    assert "Traceback" not in r.get_data(as_text=True)


def test_depot_errors_keep_their_status():
    r = make_app().test_client().get("/missing")
    assert r.status_code == 404
    assert r.get_json() == {"error": "model 'x' not found: it is not in the repository"}
    assert r.content_type == "application/json"


def test_routing_errors_are_json():
    client = make_app().test_client()
    assert client.get("/nowhere").get_json() == {"error": "Not Found"}
    r = client.post("/boom")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]


@pytest.mark.parametrize("error, status, message", [
    (ModelNotFound("x"), 404, "model 'x' not found: it is not in the repository"),
    (ModelNotFound("x", "2"), 404, "model 'x' has no version '2'"),
    (ModelNotReady("x", "v1", "UNAVAILABLE", "unloaded"), 400,
     "model 'x' version 'v1' is not ready (UNAVAILABLE: unloaded)"),
    (ModelNotReady("x", "", "LOADING", "loading"), 400,
     "model 'x' is not ready (LOADING: loading)"),
    (ModelChanging("x"), 400, "model 'x' is changing too fast to serve; try again"),
    (ModelBusy("x", 2.5), 409,
     "model 'x' is busy: another load or unload has held it for 2.5 s; try again"),
    (BodyTooLarge(70, 64), 413,
     "request body too large: 70 bytes, the limit is 64 bytes (DEPOT_MAX_BODY_BYTES)"),
    (BodyTooLarge(None, 64), 413, "request body too large: over 64 bytes (DEPOT_MAX_BODY_BYTES)"),
    (MalformedChunks("bad chunk size 'x'"), 400, "malformed chunked body: bad chunk size 'x'"),
    (InputRejected("no"), 400, "no"),
    (Unauthorized("key"), 401, "key"),
], ids=lambda v: type(v).__name__ if isinstance(v, Failure) else None)
def test_each_failure_words_its_message_and_keeps_its_status(error, status, message):
    assert (error.status, error.message) == (status, message)
    head, _, body = error_answer(error).partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert b"Connection: close" in head and b"Content-Type: application/json" in head
    assert body == orjson.dumps({"error": message})


def test_what_cannot_be_framed_is_malformed_whatever_its_status():
    assert isinstance(BodyTooLarge(1, 0), Malformed) and isinstance(MalformedChunks(""), Malformed)
    assert not isinstance(ModelNotFound("x"), Malformed)
