"""V2 tensors <-> numpy.

This module alone knows the JSON shape of an inference request and response.
It checks everything a client can get wrong and says exactly what (which
input, which shape, how many values), so runtimes only ever see well-formed
numpy arrays.
"""
from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from .errors import BadRequest

# V2 datatype -> numpy dtype; the inverse is derived, never written twice.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
DATATYPES: dict[np.dtype, str] = {v: k for k, v in DTYPES.items() if k != "BYTES"}

MAX_ELEMENTS = 1 << 28  # far above any body limit; stops shape-only memory bombs


@dataclass
class Tensor:
    name: str
    array: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class InferenceRequest:
    id: str
    inputs: list[Tensor]
    outputs: list[str]
    parameters: dict[str, Any]


def parse_json(body: bytes, what: str = "request body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"{what} is not valid JSON: {e}") from None


def parse_object(body: bytes, what: str = "request body") -> dict[str, Any]:
    """An empty body means ``{}``: tritonclient sends none on the repository routes."""
    if not body.strip():
        return {}
    value = parse_json(body, what)
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _shape(name: str, value: Any) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise BadRequest(f"input {name!r}: 'shape' must be a list of integers")
    if any(d < 0 for d in value):
        raise BadRequest(f"input {name!r}: 'shape' {value} has a negative dimension")
    if math.prod(value) > MAX_ELEMENTS:
        raise BadRequest(f"input {name!r}: 'shape' {value} is too large")
    return tuple(value)


def _flatten_strings(name: str, data: Any) -> list[bytes]:
    out: list[bytes] = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, str):
            out.append(item.encode())
        else:
            raise BadRequest(f"input {name!r}: BYTES data must be strings, got {type(item).__name__}")
    return out


def _array(name: str, datatype: str, shape: tuple[int, ...], data: Any) -> np.ndarray:
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        flat = _flatten_strings(name, data)
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
    else:
        try:
            array = np.asarray(data, dtype=DTYPES[datatype])
        except (ValueError, TypeError, OverflowError) as e:
            raise BadRequest(f"input {name!r}: data does not fit {datatype}: {e}") from None
    if array.size != math.prod(shape):
        raise BadRequest(
            f"input {name!r}: shape {list(shape)} needs {math.prod(shape)} values, got {array.size}"
        )
    return array.reshape(shape)


def _parameters(raw: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = raw.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{what} must be an object")
    return parameters


def decode_input(raw: Any) -> Tensor:
    if not isinstance(raw, dict):
        raise BadRequest("each input must be a JSON object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("each input needs a non-empty string 'name'")
    datatype = raw.get("datatype")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise BadRequest(
            f"input {name!r}: unknown datatype {datatype!r}; expected one of {', '.join(DTYPES)}"
        )
    shape = _shape(name, raw.get("shape"))
    if "data" not in raw:
        raise BadRequest(f"input {name!r} has no 'data'")
    parameters = _parameters(raw, f"input {name!r}: 'parameters'")
    return Tensor(name, _array(name, datatype, shape, raw["data"]), parameters)


def decode_request(body: bytes) -> InferenceRequest:
    raw = parse_object(body)
    inputs = raw.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    tensors = [decode_input(i) for i in inputs]
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise BadRequest(f"input names must be unique, got {names}")
    outputs = raw.get("outputs")
    if outputs is None:
        outputs = []
    if not isinstance(outputs, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in outputs
    ):
        raise BadRequest("'outputs' must be a list of objects with a string 'name'")
    parameters = _parameters(raw, "request 'parameters'")
    request_id = raw.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return InferenceRequest(
        id=request_id or str(uuid.uuid4()),
        inputs=tensors,
        outputs=[o["name"] for o in outputs],
        parameters=parameters,
    )


def encode_output(name: str, array: np.ndarray) -> dict[str, Any]:
    """1-D results go out as ``[N, 1]``, as MLServer does, so clients that
    index ``[row][0]`` work unchanged."""
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    datatype = DATATYPES.get(array.dtype)
    if datatype is None:  # strings, objects: class labels of str type
        data: Any = [v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()]
        datatype = "BYTES"
    elif datatype == "FP16":
        data = array.astype(np.float32).ravel()
    else:
        data = np.ascontiguousarray(array).ravel()
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "parameters": {"content_type": "np"},
        "data": data,
    }


def encode_response(
    model_name: str, model_version: str | None, request_id: str, outputs: dict[str, np.ndarray]
) -> bytes:
    body: dict[str, Any] = {"model_name": model_name}
    if model_version:
        body["model_version"] = model_version
    body["id"] = request_id
    body["parameters"] = {}
    body["outputs"] = [encode_output(name, array) for name, array in outputs.items()]
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
