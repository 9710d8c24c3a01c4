"""MLServer's content types: what a model receives for the tensors sent.

The request-level ``parameters.content_type`` (else the model's default from
``model-settings.json``, else ``np``) picks the shape of the model's input;
an input-level one says how to read that input's values. Runtimes take the
result as it is: a numpy array, a pandas DataFrame, or an array of strings.
"""
from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np

from .codec import InferenceRequest, Tensor
from ..errors import BadRequest

REQUEST_TYPES = ("np", "pd", "str")
INPUT_TYPES = ("np", "str", "base64", "datetime")


def model_input(request: InferenceRequest, default: str | None = None) -> Any:
    content_type = request.parameters.get("content_type") or default or "np"
    if content_type == "pd":
        return _dataframe(request.inputs)
    if content_type not in REQUEST_TYPES:
        raise BadRequest(f"unknown request content_type {content_type!r}; Depot reads "
                         f"{', '.join(REQUEST_TYPES)}")
    if len(request.inputs) != 1:
        raise BadRequest(f"content_type {content_type!r} takes exactly one input tensor, got "
                         f"{len(request.inputs)}; send parameters.content_type 'pd' for several")
    tensor = request.inputs[0]
    if content_type == "str":
        return _strings(tensor)
    return decode(tensor)


def decode(tensor: Tensor) -> np.ndarray:
    """One input's values, read as its own content type says."""
    content_type = tensor.parameters.get("content_type") or "np"
    if content_type == "np":
        return tensor.array
    if content_type not in INPUT_TYPES:
        raise BadRequest(f"input {tensor.name!r}: unknown content_type {content_type!r}; "
                         f"Depot reads {', '.join(INPUT_TYPES)}")
    if tensor.array.dtype != object:
        raise BadRequest(f"input {tensor.name!r}: content_type {content_type!r} needs BYTES data")
    if content_type == "str":
        return _strings(tensor)
    if content_type == "base64":
        try:
            return _map(tensor.array, lambda v: base64.b64decode(v, validate=True))
        except (binascii.Error, ValueError) as e:
            raise BadRequest(f"input {tensor.name!r}: not base64: {e}") from None
    import pandas as pd

    try:
        stamps = pd.to_datetime(_strings(tensor).ravel(), format="ISO8601")
        return stamps.to_numpy(dtype="datetime64[ns]").reshape(tensor.array.shape)
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BadRequest(f"input {tensor.name!r}: not ISO-8601 datetimes: {first}") from None


def _strings(tensor: Tensor) -> np.ndarray:
    if tensor.array.dtype != object:
        raise BadRequest(f"input {tensor.name!r}: content_type 'str' needs BYTES data")
    try:
        return _map(tensor.array, lambda v: v.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BadRequest(f"input {tensor.name!r}: not UTF-8: {e}") from None


def _map(array: np.ndarray, fn) -> np.ndarray:
    out = np.empty(array.shape, dtype=object)
    out.ravel()[:] = [fn(v) for v in array.ravel()]
    return out


def _dataframe(tensors: list[Tensor]) -> Any:
    """One column per input, named after it, as MLServer's pandas codec does.
    BYTES columns arrive as text unless their content type says otherwise."""
    import pandas as pd

    columns = {}
    for tensor in tensors:
        values = decode(tensor) if tensor.parameters.get("content_type") else (
            _strings(tensor) if tensor.array.dtype == object else tensor.array)
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise BadRequest(f"input {tensor.name!r}: a pd column must have shape [N] or "
                             f"[N, 1], got {list(values.shape)}")
        columns[tensor.name] = values
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise BadRequest(f"pd columns must have the same length, got {sorted(lengths)}")
    return pd.DataFrame(columns)
