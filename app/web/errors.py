"""The one place HTTP answers a failure: every error becomes the
``{"error": "..."}`` body that tritonclient and curl users read.

A :class:`~runtimes.base.Failure` (Depot's errors in app/errors.py, and a
runtime's refusal of its input) keeps its status and headers; werkzeug's
routing errors keep theirs; anything else is a 500 with a request id and no
traceback.
"""
from __future__ import annotations

import logging
import uuid

import orjson
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from runtimes.base import Failure

from ..environ import REQUEST_ID
from .responses import error_response

log = logging.getLogger("depot")


def _failure(e: Failure) -> Response:
    response = error_response(e.message, e.status)
    response.headers.update(e.headers)
    return response


def _http_error(e: HTTPException) -> Response:
    """Routing errors (404, 405, 413) keep werkzeug's status and headers
    (``Allow`` on 405) but get Depot's JSON body."""
    response = e.get_response()
    if e.code == 413:
        limit = current_app.config["MAX_CONTENT_LENGTH"]
        message = f"request body too large: the limit is {limit} bytes (DEPOT_MAX_BODY_BYTES)"
    else:
        message = e.name if e.code in (404, 405) else e.description
    response.set_data(orjson.dumps({"error": message}))
    response.mimetype = "application/json"
    return response


def _unexpected(e: Exception) -> Response:
    request_id = uuid.uuid4().hex[:12]
    request.environ[REQUEST_ID] = request_id  # the access log line carries it too
    log.exception("internal error (id %s)", request_id, extra={"request_id": request_id})
    return error_response(f"internal error (id {request_id})", 500)


def init_app(app: Flask) -> None:
    app.register_error_handler(Failure, _failure)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
