"""The REST door: the V2 routes and the Model Repository extension over HTTP.

Thin on purpose: read the HTTP request into the core's plain types, call the
core (app/v2/core.py), which holds every rule, and write its answer as JSON
(errors are written in app/web/errors.py). Every route that names a model
also answers under ``/versions/<version>/``.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from flask import Blueprint, Response, current_app, request
from flask.globals import request_ctx
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from ..environ import HOLDS_WRITES, MODEL, REQUEST_ID
from ..errors import BadRequest, RequestTimeout
from ..v2 import batching, codec, compression
from ..v2.core import SERVER_VERSION
from . import openapi
from .responses import WholeResponse, json_response

if TYPE_CHECKING:
    from ..depot import Depot
    from ..store import Row
    from ..v2.core import DataPlane, IndexEntry

bp = Blueprint("v2", __name__)


def depot() -> "Depot":
    return current_app.extensions["depot"]


def core() -> "DataPlane":
    return current_app.extensions["depot"].core


def model_route(rule: str, **options: Any):
    """Register a view under ``/v2/models/<name>`` and its versioned twin."""
    def decorate(view):
        bp.add_url_rule(f"/v2/models/<name>{rule}", view_func=view, **options)
        bp.add_url_rule(f"/v2/models/<name>/versions/<version>{rule}", view_func=view, **options)
        return view
    return decorate


# -- health and server metadata ---------------------------------------------

@bp.get("/v2/health/live")
def live() -> Response:
    return json_response({"live": True})


@bp.get("/v2/health/ready")
def ready() -> Response:
    problem = core().unready_reason()
    if problem is not None:
        return json_response({"ready": False, "error": problem}, 503)
    return json_response({"ready": True})


@bp.get("/v2")
@bp.get("/v2/")  # as the Open Inference Protocol's REST spec writes it
def server_metadata() -> Response:
    meta = core().server_metadata()
    return json_response({"name": meta.name, "version": meta.version,
                          "extensions": list(meta.extensions),
                          "depot": {"watcher_pid": meta.watcher_pid}})


# -- models -------------------------------------------------------------------

@model_route("")
def model_metadata(name: str, version: str | None = None) -> Response:
    return json_response(dataclasses.asdict(core().model_metadata(name, version)))


@model_route("/config")
def model_config(name: str, version: str | None = None) -> Response:
    """Triton's model configuration (app/v2/core.py says what it holds)."""
    config = core().model_config(name, version)
    return json_response({
        "name": config.name,
        "platform": config.platform,
        "backend": config.backend,
        "max_batch_size": config.max_batch_size,
        "input": [dataclasses.asdict(t) for t in config.inputs],
        "output": [dataclasses.asdict(t) for t in config.outputs],
    })


@model_route("/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    core().model_ready(name, version)
    return json_response({"name": name, "ready": True})


@model_route("/infer", methods=["POST"])
def infer(name: str, version: str | None = None) -> Response:
    # The one hot route: the request's context is looked up once (through
    # ``request``, each attribute costs as much as all the rest of this
    # line), and headers are read from the environ: microseconds, which add
    # up at a thousand requests a second.
    ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
    app, environ = ctx.app, ctx.request.environ
    environ[MODEL] = name  # for the access log line
    with app.extensions["depot"].core.inference(name, version,
                                                environ.get(HOLDS_WRITES, False)) as call:
        limit = app.config["MAX_CONTENT_LENGTH"]
        body = compression.decompress(request_body(environ, limit),
                                      environ.get("HTTP_CONTENT_ENCODING"), limit)
        req = codec.decode_request(body, header_length(environ))
        environ[REQUEST_ID] = req.id
        # the worker may have seated it with others for one model call
        results = call.run(req, environ.get(batching.SEAT))
        response = infer_response(call.row, req, results, environ.get("HTTP_ACCEPT_ENCODING"))
        call.encoded()
    return response


def infer_response(row: Row, req: codec.InferenceRequest, results: dict[str, Any],
                   accept_encoding: str | None) -> Response:
    """JSON, or JSON and binary tensors, compressed if the client asks."""
    binary = frozenset(o.name for o in req.outputs if o.binary) if req.outputs else \
        frozenset(results) if req.binary_output else frozenset()
    payload, json_length = codec.encode_response(row.name, row.version, req.id, results, binary)
    response = WholeResponse(payload, content_type="application/json")
    if json_length is not None:
        response.mimetype = "application/octet-stream"
        response.headers["Inference-Header-Content-Length"] = str(json_length)
    coding = compression.accepted(accept_encoding) if accept_encoding else None
    if coding and len(payload) >= compression.MIN_SIZE:
        response.set_data(compression.compress(payload, coding))
        response.headers["Content-Encoding"] = coding
    return response


def request_body(environ: dict[str, Any], limit: int | None) -> bytes:
    """The whole body. A client that stops sending it mid-way (the worker's
    socket timeout, or a close) gets a 408 that ends the connection, rather
    than werkzeug's generic 400 and a wait to drain what never comes.

    A body of known length is read from ``wsgi.input`` in one call: what
    ``request.get_data()`` does through its stream wrappers, at a fifth of
    the cost, with the same 413 past ``limit``. A chunked body takes
    werkzeug's way."""
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdecimal():
        size = int(length)
        if limit is not None and size > limit:
            raise RequestEntityTooLarge()
        body = environ["wsgi.input"].read(size) if size else b""
        if len(body) == size:
            return body
    else:
        try:
            return request.get_data()
        except ClientDisconnected:
            pass
    raise RequestTimeout("the request body stopped arriving before its "
                         "Content-Length was reached")


def header_length(environ: dict[str, Any]) -> int | None:
    """The binary tensor extension's Inference-Header-Content-Length, if sent."""
    value = environ.get("HTTP_INFERENCE_HEADER_CONTENT_LENGTH")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"Inference-Header-Content-Length must be an integer, got {value!r}") \
            from None


# -- statistics and metrics ----------------------------------------------------

@bp.get("/v2/models/stats")
@model_route("/stats")
def statistics(name: str | None = None, version: str | None = None) -> Response:
    """Triton's statistics extension, summed over every worker."""
    return json_response({"model_stats": core().statistics(name, version)})


@bp.get("/v2/openapi.json")
def openapi_document() -> Response:
    return json_response(openapi.document(SERVER_VERSION))


@bp.get("/metrics")
def prometheus() -> Response:
    parts = depot()
    return Response(parts.metrics.exposition(parts.registry.store.rows),
                    mimetype="text/plain; version=0.0.4")


# -- repository extension -------------------------------------------------------

def control_body() -> dict[str, Any]:
    """Check the API key, then read the body (empty means ``{}``)."""
    core().authorize(request.headers.get("Authorization"))
    return codec.parse_object(request_body(request.environ,
                                           current_app.config["MAX_CONTENT_LENGTH"]))


@bp.post("/v2/repository/index")
def repository_index() -> Response:
    body = control_body()
    return json_response([index_entry(e) for e in core().index(body.get("ready", False))])


def index_entry(entry: "IndexEntry") -> dict[str, Any]:
    """A model version as the repository extension lists it; no version
    key for a model that has none, as MLServer and Triton answer."""
    listed: dict[str, Any] = {"name": entry.name}
    if entry.version:
        listed["version"] = entry.version
    listed["state"] = entry.state
    listed["reason"] = entry.reason
    return listed


@bp.post("/v2/repository/models/<name>/load")
def repository_load(name: str) -> Response:
    core().load(name, control_body().get("parameters"))
    return json_response({"name": name, "load": True})


@bp.post("/v2/repository/models/<name>/unload")
def repository_unload(name: str) -> Response:
    core().unload(name, control_body().get("parameters"))
    return json_response({"name": name, "unload": True})
