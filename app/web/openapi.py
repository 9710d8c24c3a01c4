"""The OpenAPI 3.1 description of every route Depot serves.

Built from one table, so each route that names a model is described under
``/v2/models/{name}`` and its ``/versions/{version}`` twin alike; a test holds
it to the routes Flask really has and to the answers a real server gives.
"""
from __future__ import annotations

from typing import Any

DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32",
             "INT64", "FP16", "FP32", "FP64", "BYTES"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _tensor(data_required: bool) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["name", "shape", "datatype"] + (["data"] if data_required else []),
        "properties": {
            "name": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer"}},
            "datatype": {"type": "string", "enum": DATATYPES},
            "parameters": {"type": "object"},
            "data": {},
        },
    }


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"],
              "properties": {"error": {"type": "string"}}},
    "Live": {"type": "object", "required": ["live"], "properties": {"live": {"type": "boolean"}}},
    "Ready": {"type": "object", "required": ["ready"],
              "properties": {"ready": {"type": "boolean"}}},
    "ModelReady": {"type": "object", "required": ["name", "ready"],
                   "properties": {"name": {"type": "string"}, "ready": {"type": "boolean"}}},
    "ServerMetadata": {
        "type": "object", "required": ["name", "version", "extensions"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "extensions": {"type": "array", "items": {"type": "string"}},
                       "depot": {"type": "object"}},
    },
    "TensorMetadata": {"type": "object", "required": ["name", "datatype", "shape"],
                       "properties": {"name": {"type": "string"}, "datatype": {"type": "string"},
                                      "shape": {"type": "array", "items": {"type": "integer"}}}},
    "ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {"name": {"type": "string"},
                       "versions": {"type": "array", "items": {"type": "string"}},
                       "platform": {"type": "string"},
                       "inputs": {"type": "array", "items": _ref("TensorMetadata")},
                       "outputs": {"type": "array", "items": _ref("TensorMetadata")}},
    },
    "InferenceRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {"id": {"type": "string"}, "parameters": {"type": "object"},
                       "inputs": {"type": "array", "minItems": 1, "items": _tensor(False)},
                       "outputs": {"type": "array", "items": {
                           "type": "object", "required": ["name"],
                           "properties": {"name": {"type": "string"},
                                          "parameters": {"type": "object"}}}}},
    },
    "InferenceResponse": {
        "type": "object", "required": ["model_name", "id", "outputs"],
        "properties": {"model_name": {"type": "string"}, "model_version": {"type": "string"},
                       "id": {"type": "string"}, "parameters": {"type": "object"},
                       "outputs": {"type": "array", "items": _tensor(False)}},
    },
    "ModelConfig": {
        "type": "object", "required": ["name", "platform", "max_batch_size", "input", "output"],
        "properties": {"name": {"type": "string"}, "platform": {"type": "string"},
                       "backend": {"type": "string"}, "max_batch_size": {"type": "integer"},
                       "input": {"type": "array", "items": _ref("TensorConfig")},
                       "output": {"type": "array", "items": _ref("TensorConfig")}},
    },
    "TensorConfig": {
        "type": "object", "required": ["name", "data_type", "dims"],
        "properties": {"name": {"type": "string"}, "data_type": {"type": "string"},
                       "dims": {"type": "array", "items": {"type": "integer"}}},
    },
    "IndexRequest": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
    "IndexEntry": {
        "type": "object", "required": ["name", "state", "reason"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "state": {"type": "string",
                                 "enum": ["READY", "UNAVAILABLE", "LOADING"]},
                       "reason": {"type": "string"}},
    },
    "Index": {"type": "array", "items": _ref("IndexEntry")},
    "ControlRequest": {"type": "object", "properties": {"parameters": {"type": "object"}}},
    "ControlResponse": {"type": "object", "required": ["name"],
                        "properties": {"name": {"type": "string"}, "load": {"type": "boolean"},
                                       "unload": {"type": "boolean"}}},
    "Duration": {"type": "object", "required": ["count", "ns"],
                 "properties": {"count": {"type": "integer"}, "ns": {"type": "integer"}}},
    "ModelStatistics": {
        "type": "object",
        "required": ["name", "version", "last_inference", "inference_count", "execution_count",
                     "inference_stats"],
        "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                       "last_inference": {"type": "integer"},
                       "inference_count": {"type": "integer"},
                       "execution_count": {"type": "integer"},
                       "inference_stats": {"type": "object",
                                           "additionalProperties": _ref("Duration")}},
    },
    "Statistics": {"type": "object", "required": ["model_stats"],
                   "properties": {"model_stats": {"type": "array",
                                                  "items": _ref("ModelStatistics")}}},
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": _ref(schema)}}}


ERRORS = {"400": "malformed request, or the model is not ready",
          "401": "the repository API key is missing or wrong",
          "404": "unknown model or version",
          "413": "the body is over DEPOT_MAX_BODY_BYTES",
          "415": "a Content-Encoding Depot cannot read",
          "409": "another load or unload of the model held it past DEPOT_LOCK_TIMEOUT",
          "503": "start-up loading is not done, or the state folder is full, read-only "
                 "or its database was deleted or replaced (the reason is in 'error')",
          "507": "the state folder is full: nothing was changed"}


def _operation(method: str, summary: str, ok: str | None, *errors: str,
               body: str | None = None, content: str = "application/json") -> dict:
    """``ok`` names the 200 answer's schema; None: any document of ``content``."""
    schema = {"type": "string"} if content.startswith("text/") else {"type": "object"}
    responses = {"200": _json(ok, summary) if ok else
                 {"description": summary, "content": {content: {"schema": schema}}}}
    for code in errors:
        responses[code] = _json("Error", ERRORS[code])
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if body:
        op["requestBody"] = {"required": False,
                             "content": {"application/json": {"schema": _ref(body)}}}
    return {method: op}


MODEL = "/v2/models/{name}"
#: path -> operations; the {name} routes also get a /versions/{version} twin
ROUTES: dict[str, dict] = {
    "/v2/health/live": _operation("get", "The server is alive", "Live"),
    "/v2/health/ready": _operation("get", "Start-up loading is done and the state folder "
                                   "takes writes", "Ready", "503"),
    "/v2": _operation("get", "Server metadata and extensions", "ServerMetadata"),
    "/v2/": _operation("get", "Server metadata and extensions", "ServerMetadata"),
    "/v2/models/stats": _operation("get", "Statistics of every model", "Statistics"),
    "/metrics": _operation("get", "Prometheus metrics, summed over workers", None,
                           content="text/plain"),
    "/v2/openapi.json": _operation("get", "This document", None),
    "/v2/repository/index": _operation("post", "Every model version, its state and reason",
                                       "Index", "400", "401", "503", body="IndexRequest"),
    "/v2/repository/models/{name}/load": _operation(
        "post", "Load or reload every version of a model", "ControlResponse", "400", "401",
        "404", "409", "503", "507", body="ControlRequest"),
    "/v2/repository/models/{name}/unload": _operation(
        "post", "Unload every version of a model", "ControlResponse", "400", "401", "404",
        "409", "503", "507", body="ControlRequest"),
}
MODEL_ROUTES: dict[str, dict] = {
    "": _operation("get", "Model metadata", "ModelMetadata", "404"),
    "/ready": _operation("get", "The model is ready on this server", "ModelReady", "400", "404"),
    "/config": _operation("get", "Triton's model configuration", "ModelConfig", "404"),
    "/infer": _operation("post", "Inference (JSON, or binary tensors after the JSON header)",
                         "InferenceResponse", "400", "404", "413", "415",
                         body="InferenceRequest"),
    "/stats": _operation("get", "Statistics of a model", "Statistics", "404"),
}


def _parameters(path: str) -> list[dict[str, Any]]:
    return [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
            for p in ("name", "version") if "{" + p + "}" in path]


def document(version: str) -> dict[str, Any]:
    paths: dict[str, Any] = dict(ROUTES)
    for suffix, operations in MODEL_ROUTES.items():
        paths[MODEL + suffix] = operations
        paths[MODEL + "/versions/{version}" + suffix] = operations
    for path, operations in paths.items():
        if _parameters(path):
            paths[path] = {**operations, "parameters": _parameters(path)}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Depot", "version": version,
                 "description": "V2 / Open Inference Protocol with the model repository, "
                                "binary tensor, classification and statistics extensions."},
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
