"""app.v2.codec in-process: V2 tensors to numpy and back."""
from __future__ import annotations

import numpy as np
import orjson
import pytest

from app.v2 import codec
from app.errors import BadRequest


def request(**inp):
    base = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    return orjson.dumps({"inputs": [{**base, **inp}]})


@pytest.mark.parametrize("datatype, data, expected", [
    ("BOOL", [True, False, True, True], np.array([[1, 0], [1, 1]], bool)),
    ("UINT8", [0, 1, 2, 255], np.array([[0, 1], [2, 255]], np.uint8)),
    ("UINT64", [0, 1, 2, 2**63], np.array([[0, 1], [2, 2**63]], np.uint64)),
    ("INT8", [-128, 1, 2, 127], np.array([[-128, 1], [2, 127]], np.int8)),
    ("INT64", [-1, 1, 2, 3], np.array([[-1, 1], [2, 3]], np.int64)),
    ("FP16", [0.5, 1, 2, 3], np.array([[0.5, 1], [2, 3]], np.float16)),
    ("FP64", [0.1, 1, 2, 3], np.array([[0.1, 1], [2, 3]], np.float64)),
    ("BYTES", ["a", "b", "ü", ""], np.array([[b"a", b"b"], ["ü".encode(), b""]], object)),
])
def test_datatypes(datatype, data, expected):
    (tensor,) = codec.decode_request(request(datatype=datatype, data=data)).inputs
    assert tensor.array.dtype == expected.dtype
    assert tensor.array.tolist() == expected.tolist()


def test_nested_and_flat_agree():
    flat = codec.decode_request(request()).inputs[0].array
    nested = codec.decode_request(request(data=[[1, 2], [3, 4]])).inputs[0].array
    assert flat.tolist() == nested.tolist()


@pytest.mark.parametrize("inp, fragment", [
    ({"data": [1, 2, 3]}, "needs 4 values, got 3"),
    ({"data": [[1, 2], [3]]}, "does not fit FP32"),
    ({"datatype": "UINT8", "data": [1, 2, 3, 256]}, "does not fit UINT8"),
    ({"datatype": "BYTES", "data": [1, 2, 3, 4]}, "must be strings"),
    ({"shape": "2x2"}, "list of integers"),
    ({"shape": [2, True]}, "list of integers"),
    ({"shape": [1 << 20, 1 << 20]}, "too large"),
    ({"name": ""}, "non-empty string 'name'"),
])
def test_bad_tensors(inp, fragment):
    with pytest.raises(BadRequest, match=fragment):
        codec.decode_request(request(**inp))


def test_duplicate_input_names():
    inp = {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}
    with pytest.raises(BadRequest, match="unique"):
        codec.decode_request(orjson.dumps({"inputs": [inp, inp]}))


def test_encode_response_shapes_and_types():
    payload, json_length = codec.encode_response("m", None, "id-1", {
        "predict": np.array([1, 2, 3]),
        "predict_proba": np.array([[0.25, 0.75]], np.float32),
        "labels": np.array(["a", "b"]),
        "half": np.array([np.nan], np.float16),
    })
    assert json_length is None
    body = orjson.loads(payload)
    assert "model_version" not in body and body["id"] == "id-1"
    predict, proba, labels, half = body["outputs"]
    assert predict == {"name": "predict", "shape": [3, 1], "datatype": "INT64",
                       "parameters": {"content_type": "np"}, "data": [1, 2, 3]}
    assert proba["datatype"] == "FP32" and proba["data"] == [0.25, 0.75]
    assert labels["datatype"] == "BYTES" and labels["data"] == ["a", "b"]
    assert half["datatype"] == "FP16" and half["data"] == [None]


def test_empty_body_is_an_empty_object():
    assert codec.parse_object(b"") == {}
    assert codec.parse_object(b"  \n") == {}
