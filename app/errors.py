"""Every failure Depot reports, and the one place that renders them.

Each error is a class whose HTTP status is a class attribute; code that finds
a problem raises the class that names it, and only :func:`init_app` turns it
into the ``{"error": "..."}`` body that tritonclient and curl users read.
``registry`` and ``codec`` raise these without importing Flask; the runtimes
raise their own :class:`~runtimes.base.InputRejected`, rendered here too.
"""
from __future__ import annotations

import logging
import uuid

import orjson
from flask import Flask, Response, current_app, request
from werkzeug.exceptions import HTTPException

from runtimes.base import InputRejected
from .responses import WholeResponse

log = logging.getLogger("depot")


class DepotError(Exception):
    """Base class: an unexpected failure, reported as 500."""

    status = 500
    headers: dict[str, str] = {}

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else self.__class__.__name__


class BadRequest(DepotError):
    """The request is malformed or does not fit the model."""

    status = 400


class ModelNotFound(DepotError):
    """No model (or no such version of it) is in the repository."""

    status = 404


class ModelNotReady(DepotError):
    """The model is known but cannot serve now (unloaded, failed, loading).

    400 rather than 503: load balancers retry a 503, which is wrong for a
    model that was unloaded on purpose.
    """

    status = 400


class LoadFailed(DepotError):
    """The model's artifact could not be loaded; the reason is in the index."""

    status = 400


class ModelBusy(DepotError):
    """Another load or unload of the model held its lock past DEPOT_LOCK_TIMEOUT.

    409 rather than a wait without end: a loader that hangs (or is stopped)
    must not take every worker that calls after it down with it.
    """

    status = 409


class InsufficientStorage(DepotError):
    """The state folder is full: the write was refused and nothing changed."""

    status = 507


class StateUnavailable(DepotError):
    """The state folder cannot be trusted or written: it is read-only, or
    its database was deleted or replaced while Depot ran."""

    status = 503


class Unauthorized(DepotError):
    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="depot"'}


class RequestTimeout(DepotError):
    """The client stopped sending its body mid-way; the connection ends."""

    status = 408


class PayloadTooLarge(DepotError):
    status = 413


class UnsupportedMediaType(DepotError):
    """A body in a content coding Depot cannot read."""

    status = 415


def json_response(payload: object, status: int = 200) -> Response:
    return WholeResponse(orjson.dumps(payload), status=status, mimetype="application/json")


def error_response(message: str, status: int) -> Response:
    return json_response({"error": message}, status)


def _depot_error(e: DepotError) -> Response:
    response = error_response(e.message, e.status)
    response.headers.update(e.headers)
    return response


def _input_rejected(e: InputRejected) -> Response:
    """A runtime's refusal of the request (runtimes/ knows nothing of Depot's
    errors): the same 400 body as a BadRequest."""
    return error_response(e.message, e.status)


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
    request.environ["depot.request_id"] = request_id  # the access log line carries it too
    log.exception("internal error (id %s)", request_id, extra={"request_id": request_id})
    return error_response(f"internal error (id {request_id})", 500)


def init_app(app: Flask) -> None:
    app.register_error_handler(DepotError, _depot_error)
    app.register_error_handler(InputRejected, _input_rejected)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
