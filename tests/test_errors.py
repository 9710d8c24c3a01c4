"""app.errors in-process: one JSON body for every failure, no stack traces."""
from __future__ import annotations

import logging

from flask import Flask

from app import errors as depot_errors
from app.web import errors


def make_app() -> Flask:
    app = Flask(__name__)
    errors.init_app(app)

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    @app.get("/missing")
    def missing():
        raise depot_errors.ModelNotFound("model 'x' not found")

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
    assert r.status_code == 404 and r.get_json() == {"error": "model 'x' not found"}
    assert r.content_type == "application/json"


def test_routing_errors_are_json():
    client = make_app().test_client()
    assert client.get("/nowhere").get_json() == {"error": "Not Found"}
    r = client.post("/boom")
    assert r.status_code == 405 and "GET" in r.headers["Allow"]
