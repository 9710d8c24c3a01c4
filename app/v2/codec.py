"""V2 tensors <-> numpy.

This module alone knows the JSON shape of an inference request and response.
It checks everything a client can get wrong and says exactly what (which
input, which shape, how many values), so runtimes only ever see well-formed
numpy arrays.
"""
from __future__ import annotations

import itertools
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from runtimes.base import RequestedOutput

from ..errors import BadRequest

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


@dataclass(slots=True)
class Tensor:
    name: str
    array: np.ndarray
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class InferenceRequest:
    id: str
    inputs: list[Tensor]
    outputs: list[RequestedOutput]
    parameters: dict[str, Any]
    binary_output: bool = False  # for outputs the request does not list


def parse_object(body: bytes, what: str = "request body") -> dict[str, Any]:
    """An empty body means ``{}``: tritonclient sends none on the repository routes."""
    if not body or body.isspace():  # isspace stops at the first other byte; strip copies
        return {}
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise BadRequest(f"{what} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _shape(name: str, value: Any) -> tuple[int, ...]:
    # a plain loop: generator expressions cost a microsecond each, per request
    if type(value) is not list:
        raise BadRequest(f"input {name!r}: 'shape' must be a list of integers")
    size = 1
    for d in value:
        if type(d) is not int:  # not bool either
            raise BadRequest(f"input {name!r}: 'shape' must be a list of integers")
        if d < 0:
            raise BadRequest(f"input {name!r}: 'shape' {value} has a negative dimension")
        size *= d
    if size > MAX_ELEMENTS:
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


def _from_binary(name: str, datatype: str, shape: tuple[int, ...], raw: memoryview) -> np.ndarray:
    """A tensor of the binary extension: little-endian, row-major; BOOL one
    byte each; BYTES a uint32 length before each element."""
    count = math.prod(shape)
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            if offset + 4 > len(raw):
                raise BadRequest(f"input {name!r}: BYTES element {len(items)} has a cut length")
            size = int.from_bytes(raw[offset:offset + 4], "little")
            offset += 4
            if offset + size > len(raw):
                raise BadRequest(f"input {name!r}: BYTES element {len(items)} runs past its data")
            items.append(bytes(raw[offset:offset + size]))
            offset += size
        if len(items) != count:
            raise BadRequest(f"input {name!r}: shape {list(shape)} needs {count} values, "
                             f"got {len(items)}")
        array = np.empty(count, dtype=object)
        array[:] = items
        return array.reshape(shape)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise BadRequest(f"input {name!r}: shape {list(shape)} of {datatype} needs "
                         f"{count * dtype.itemsize} bytes, got {len(raw)}")
    if datatype == "BOOL":
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).reshape(shape)


def _parameters(raw: dict[str, Any], what: str, name: str = "") -> dict[str, Any]:
    """``raw``'s parameters object; ``what`` names it in the error, with
    ``{}`` for ``name`` (formatted only then: this runs for every input)."""
    parameters = raw.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise BadRequest(f"{what.format(repr(name))} must be an object")
    return parameters


def _flag(parameters: dict[str, Any], key: str, what: str, name: str = "") -> bool | None:
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{what.format(repr(name))}: '{key}' must be true or false, "
                         f"got {value!r}")
    return value


class _Binary:
    """The binary part of a request, handed out to inputs in order."""

    def __init__(self, data: memoryview | None) -> None:
        self.data = data
        self.offset = 0

    def take(self, name: str, size: Any) -> memoryview:
        if self.data is None:
            raise BadRequest(f"input {name!r} has 'binary_data_size' but the request has no "
                             "Inference-Header-Content-Length header")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BadRequest(f"input {name!r}: 'binary_data_size' must be a non-negative integer")
        if self.offset + size > len(self.data):
            raise BadRequest(f"input {name!r}: its {size} bytes of binary data run past the end "
                             f"of the body ({len(self.data) - self.offset} left)")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def check_used(self) -> None:
        if self.data is not None and self.offset != len(self.data):
            raise BadRequest(f"the body has {len(self.data) - self.offset} bytes of binary "
                             "data that no input's 'binary_data_size' accounts for")


_NO_BINARY = _Binary(None)  # a request without binary data: shared, as nothing moves its offset


def decode_input(raw: Any, binary: _Binary) -> Tensor:
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
    parameters = _parameters(raw, "input {}: 'parameters'", name)
    size = parameters.get("binary_data_size")
    if size is not None:
        if "data" in raw:
            raise BadRequest(f"input {name!r} has both 'data' and 'binary_data_size'")
        return Tensor(name, _from_binary(name, datatype, shape, binary.take(name, size)),
                      parameters)
    if "data" not in raw:
        raise BadRequest(f"input {name!r} has no 'data'")
    return Tensor(name, _array(name, datatype, shape, raw["data"]), parameters)


def _requested_output(raw: Any, binary_default: bool) -> RequestedOutput:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise BadRequest("'outputs' must be a list of objects with a string 'name'")
    name = raw["name"]
    parameters = _parameters(raw, "output {}: 'parameters'", name)
    binary = _flag(parameters, "binary_data", "output {}", name)
    classes = parameters.get("classification", 0)
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 0:
        raise BadRequest(f"output {name!r}: 'classification' must be a non-negative integer")
    return RequestedOutput(name, binary_default if binary is None else binary, classes)


def new_request_id() -> str:
    """A UUID (version 4) for a request that brings no id, as MLServer gives
    one. Its first 80 bits are random, drawn once per process; the last 48
    count this process's requests: unique like ``uuid.uuid4()``, at a tenth
    of its cost (no system call a request)."""
    return f"{_ID_PREFIX}{next(_ID_COUNT) & 0xFFFFFFFFFFFF:012x}"


def _new_id_prefix() -> None:
    global _ID_PREFIX, _ID_COUNT
    raw = bytearray(os.urandom(10))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    _ID_PREFIX, _ID_COUNT = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-", itertools.count()


_ID_PREFIX, _ID_COUNT = "", itertools.count()
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)  # each worker draws its own


def decode_request(body: bytes, header_length: int | None = None) -> InferenceRequest:
    """A V2 request; with ``header_length`` (the Inference-Header-Content-Length
    header) the JSON is followed by the binary tensor data."""
    binary = _NO_BINARY
    if header_length is not None:
        if header_length <= 0:
            raise BadRequest("Inference-Header-Content-Length must give the JSON header's "
                             "length; raw binary requests are not supported")
        if header_length > len(body):
            raise BadRequest(f"Inference-Header-Content-Length {header_length} exceeds the body "
                             f"({len(body)} bytes)")
        binary = _Binary(memoryview(body)[header_length:])
        body = body[:header_length]
    raw = parse_object(body)
    inputs = raw.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("request needs a non-empty 'inputs' list")
    # a loop, and no check of binary data a request has none of: under
    # load, each comprehension or call costs about a microsecond
    tensors = []
    for i in inputs:
        tensors.append(decode_input(i, binary))
    if binary is not _NO_BINARY:
        binary.check_used()
    if len(tensors) > 1:
        names = [t.name for t in tensors]
        if len(set(names)) != len(names):
            raise BadRequest(f"input names must be unique, got {names}")
    parameters = _parameters(raw, "request 'parameters'")
    binary_output = bool(_flag(parameters, "binary_data_output", "request"))
    outputs = raw.get("outputs")
    if outputs is None:
        outputs = []
    if not isinstance(outputs, list):
        raise BadRequest("'outputs' must be a list of objects with a string 'name'")
    request_id = raw.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("'id' must be a string")
    return InferenceRequest(request_id or new_request_id(), tensors,
                            [_requested_output(o, binary_output) for o in outputs] if outputs
                            else [], parameters, binary_output)


def _raw(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        items = [v if isinstance(v, bytes) else str(v).encode() for v in array.ravel()]
        return b"".join(len(v).to_bytes(4, "little") + v for v in items)
    if datatype == "BOOL":
        return np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def encode_output(name: str, array: np.ndarray, binary: bool = False
                  ) -> tuple[dict[str, Any], bytes | None]:
    """One output tensor, as JSON data or as binary data to append. 1-D
    results go out as ``[N, 1]``, as MLServer does, so clients that index
    ``[row][0]`` work unchanged."""
    if array.ndim == 1:
        array = array.reshape(-1, 1)
    datatype = DATATYPES.get(array.dtype, "BYTES")
    out: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype,
                           "parameters": {"content_type": "np"}}
    if binary:
        raw = _raw(array, datatype)
        out["parameters"]["binary_data_size"] = len(raw)
        return out, raw
    if datatype == "BYTES":
        out["data"] = [v.decode(errors="replace") if isinstance(v, bytes) else str(v)
                       for v in array.ravel()]
    elif datatype == "FP16":
        out["data"] = array.astype(np.float32).ravel()
    else:
        out["data"] = np.ascontiguousarray(array).ravel()
    return out, None


def encode_response(model_name: str, model_version: str | None, request_id: str,
                    outputs: dict[str, np.ndarray], binary: frozenset[str] = frozenset()
                    ) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary output
    data follows it (for the Inference-Header-Content-Length header)."""
    body: dict[str, Any] = {"model_name": model_name}
    if model_version:
        body["model_version"] = model_version
    body["id"] = request_id
    body["parameters"] = {}
    body["outputs"] = tensors = []
    tail = []
    for name, array in outputs.items():  # a loop: see decode_request
        out, raw = encode_output(name, array, name in binary)
        tensors.append(out)
        if raw is not None:
            tail.append(raw)
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not tail:
        return header, None
    return header + b"".join(tail), len(header)
