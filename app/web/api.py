"""The HTTP surface: V2 dataplane and the Model Repository extension.

Thin on purpose: parse, call the registry or the runtime, encode. Every route
that names a model also answers under ``/versions/<version>/``.
"""
from __future__ import annotations

import contextlib
import hmac
import time
from typing import Any, Iterator

import orjson
from flask import Blueprint, Response, current_app, request
from flask.globals import request_ctx
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from ..environ import HOLDS_WRITES, MODEL, REQUEST_ID
from ..errors import BadRequest, ModelNotFound, RequestTimeout, Unauthorized
from ..metrics import Metrics
from ..registry import Registry
from ..store import Row
from ..v2 import batching, codec, compression, content
from . import openapi
from .responses import WholeResponse, json_response

bp = Blueprint("v2", __name__)

SERVER_NAME = "depot"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ["model_repository", "model_repository(unload_dependents)", "binary_tensor_data",
              "classification", "statistics"]


def registry() -> Registry:
    return current_app.extensions["depot"]


def metrics() -> Metrics:
    return current_app.extensions["depot.metrics"]


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
    problem = registry().unready_reason()
    if problem is not None:
        return json_response({"ready": False, "error": problem}, 503)
    return json_response({"ready": True})


@bp.get("/v2")
@bp.get("/v2/")  # as the Open Inference Protocol's REST spec writes it
def server_metadata() -> Response:
    return json_response({"name": SERVER_NAME, "version": SERVER_VERSION,
                          "extensions": EXTENSIONS,
                          "depot": {"watcher_pid": registry().watcher_pid()}})


# -- models -------------------------------------------------------------------

@model_route("")
def model_metadata(name: str, version: str | None = None) -> Response:
    row = registry().row(name, version)
    details = orjson.loads(row.details)
    return json_response({
        "name": row.name,
        "versions": registry().versions(row.name),
        "platform": row.runtime or "",
        "inputs": details.get("inputs") or [],
        "outputs": details.get("outputs") or [],
    })


@model_route("/config")
def model_config(name: str, version: str | None = None) -> Response:
    """Triton's model configuration, for ``tritonclient``'s
    ``get_model_config`` and the tools built on it, made from the same
    metadata. It says ``max_batch_size`` 0, so every ``dims`` is the whole
    shape, the batch dimension (-1) included: clients send whole batches. A
    model's own ``max_batch_size`` (the worker answering waiting requests
    together, app/v2/batching.py) changes nothing a client sends."""
    row = registry().row(name, version)
    details = orjson.loads(row.details)
    return json_response({
        "name": row.name,
        "platform": row.runtime or "",
        "backend": row.runtime or "",
        "max_batch_size": 0,
        "input": [triton_tensor(t) for t in details.get("inputs") or []],
        "output": [triton_tensor(t) for t in details.get("outputs") or []],
    })


def triton_tensor(tensor: dict[str, Any]) -> dict[str, Any]:
    """A V2 tensor's metadata as a Triton configuration writes it."""
    datatype = tensor.get("datatype", "")
    return {"name": tensor.get("name", ""),
            "data_type": "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}",
            "dims": list(tensor.get("shape") or [])}


@model_route("/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    registry().get_ready(name, version)
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
    row, runtime = app.extensions["depot"].get_ready(name, version)
    with app.extensions["depot.metrics"].track(row.name, row.version,
                                               environ.get(HOLDS_WRITES, False)) as track:
        limit = app.config["MAX_CONTENT_LENGTH"]
        body = compression.decompress(request_body(environ, limit),
                                      environ.get("HTTP_CONTENT_ENCODING"), limit)
        req = codec.decode_request(body, header_length(environ))
        environ[REQUEST_ID] = req.id
        x = content.model_input(req, runtime.content_type)
        track.rows = len(x) if getattr(x, "ndim", 1) else 1
        track.phase_done()
        seat = environ.get(batching.SEAT)  # the worker grouped it with others
        if seat is None:
            results = runtime.infer(x, req.outputs)
        else:
            results = seat.infer(runtime, x, req.outputs)
            track.executions = seat.executions
        track.phase_done()
        response = infer_response(row, req, results, environ.get("HTTP_ACCEPT_ENCODING"))
        track.phase_done()
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
    return json_response({"model_stats": metrics().statistics(registry().stats_keys(name, version))})


@bp.get("/v2/openapi.json")
def openapi_document() -> Response:
    return json_response(openapi.document(SERVER_VERSION))


@bp.get("/metrics")
def prometheus() -> Response:
    return Response(metrics().exposition(registry().store.rows),
                    mimetype="text/plain; version=0.0.4")


# -- repository extension -------------------------------------------------------

def control_body() -> dict[str, Any]:
    """Check the API key, then read the body (empty means ``{}``)."""
    key = current_app.config["DEPOT_API_KEY"]
    if key is not None:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            raise Unauthorized("repository calls need 'Authorization: Bearer <DEPOT_API_KEY>'")
    return codec.parse_object(request_body(request.environ,
                                           current_app.config["MAX_CONTENT_LENGTH"]))


@bp.post("/v2/repository/index")
def repository_index() -> Response:
    body = control_body()
    ready_only = body.get("ready", False)
    if not isinstance(ready_only, bool):
        raise BadRequest(f"'ready' must be true or false, got {ready_only!r}")
    return json_response([index_entry(row) for row in registry().index(ready_only)])


def index_entry(row: Row) -> dict[str, Any]:
    """A model version as the repository extension lists it; no version
    key for a model that has none, as MLServer and Triton answer."""
    entry: dict[str, Any] = {"name": row.name}
    if row.version:
        entry["version"] = row.version
    entry["state"] = row.state
    entry["reason"] = row.reason
    return entry


@bp.post("/v2/repository/models/<name>/load")
def repository_load(name: str) -> Response:
    parameters = control_body().get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    unsupported = [k for k in parameters if k == "config" or k.startswith("file:")]
    if unsupported:
        raise BadRequest(f"load parameter {unsupported[0]!r} is not supported by Depot")
    with control_metrics(name, "load"):
        registry().load(name)
    return json_response({"name": name, "load": True})


@bp.post("/v2/repository/models/<name>/unload")
def repository_unload(name: str) -> Response:
    parameters = control_body().get("parameters") or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    dependents = parameters.get("unload_dependents", False)
    if not isinstance(dependents, bool):
        raise BadRequest(f"'unload_dependents' must be true or false, got {dependents!r}")
    with control_metrics(name, "unload"):
        registry().unload(name)
    return json_response({"name": name, "unload": True})


@contextlib.contextmanager
def control_metrics(name: str, action: str) -> Iterator[None]:
    """Count and time a load or unload of a model the repository knows."""
    start = time.perf_counter()
    try:
        yield
    except ModelNotFound:
        raise  # not a model: no series for it
    except Exception:
        metrics().control_call(name, action, time.perf_counter() - start, ok=False)
        raise
    metrics().control_call(name, action, time.perf_counter() - start, ok=True)
