"""Nothing gets in, nothing breaks: every malformed request is a 4xx JSON
error that says what is wrong, and the server serves on afterwards.

The table of bad requests and the fuzzing run in-process, through the Flask
app over a real registry, where a failure points at its cause (the codec,
the core, the routes); the same table then goes to a real gunicorn server,
which must answer it alike and serve on."""
from __future__ import annotations

import json
import os
import socket
from typing import Any

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import in_process, output, run_server, v2_body

MNIST = "/v2/models/mnist-svm/infer"
XGB = "/v2/models/mushroom-xgboost/infer"
LIMIT = 1 << 20


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """The app in-process, with the same body limit as the server below."""
    with in_process(tmp_path_factory.mktemp("local"), max_body_bytes=LIMIT) as app:
        yield app.test_client()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("hostile"),
                    env={"DEPOT_MAX_BODY_BYTES": str(LIMIT)}) as s:
        yield s


def tensor(**changes: Any) -> dict:
    return {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64, **changes}


def infer(*inputs: dict, **extra: Any) -> bytes:
    return orjson.dumps({"inputs": list(inputs), **extra})


def nested(depth: int) -> bytes:
    return b'{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":' \
        + b"[" * depth + b"1" + b"]" * depth + b"}]}"


# id, method, path, body, headers, status, fragment of the error
CASES = [
    ("invalid-json", "POST", MNIST, b'{"inputs": [', {}, 400, "not valid JSON"),
    ("trailing-garbage", "POST", MNIST, b"{} x", {}, 400, "not valid JSON"),
    ("not-utf8", "POST", MNIST, b"\xff\xfe{}", {}, 400, "not valid JSON"),
    ("body-array", "POST", MNIST, b"[]", {}, 400, "must be a JSON object"),
    ("body-string", "POST", MNIST, b'"hi"', {}, 400, "must be a JSON object"),
    ("body-null", "POST", MNIST, b"null", {}, 400, "must be a JSON object"),
    ("empty-body", "POST", MNIST, b"", {}, 400, "non-empty 'inputs'"),
    ("whitespace-body", "POST", MNIST, b" \n ", {}, 400, "non-empty 'inputs'"),
    ("no-inputs", "POST", MNIST, b"{}", {}, 400, "non-empty 'inputs'"),
    ("empty-inputs", "POST", MNIST, infer(), {}, 400, "non-empty 'inputs'"),
    ("inputs-object", "POST", MNIST, b'{"inputs": {"a": 1}}', {}, 400, "non-empty 'inputs'"),
    ("input-not-object", "POST", MNIST, b'{"inputs": [1]}', {}, 400, "must be a JSON object"),
    ("input-no-name", "POST", MNIST, infer({**tensor(), "name": None}), {}, 400, "'name'"),
    ("input-name-number", "POST", MNIST, infer(tensor(name=5)), {}, 400, "'name'"),
    ("no-datatype", "POST", MNIST, infer(tensor(datatype=None)), {}, 400, "unknown datatype"),
    ("unknown-datatype", "POST", MNIST, infer(tensor(datatype="FLOAT")), {}, 400,
     "unknown datatype 'FLOAT'"),
    ("bf16", "POST", MNIST, infer(tensor(datatype="BF16")), {}, 400, "unknown datatype"),
    ("lowercase-datatype", "POST", MNIST, infer(tensor(datatype="fp32")), {}, 400,
     "unknown datatype"),
    ("no-shape", "POST", MNIST, infer(tensor(shape=None)), {}, 400, "list of integers"),
    ("shape-string", "POST", MNIST, infer(tensor(shape="1,64")), {}, 400, "list of integers"),
    ("shape-floats", "POST", MNIST, infer(tensor(shape=[1.0, 64.0])), {}, 400,
     "list of integers"),
    ("shape-bool", "POST", MNIST, infer(tensor(shape=[True, 64])), {}, 400, "list of integers"),
    ("shape-strings", "POST", MNIST, infer(tensor(shape=["1", "64"])), {}, 400,
     "list of integers"),
    ("negative-dim", "POST", MNIST, infer(tensor(shape=[-1, 64])), {}, 400, "negative"),
    ("huge-dims", "POST", MNIST, infer(tensor(shape=[1 << 40, 1 << 40])), {}, 400, "too large"),
    ("huge-dims-few-values", "POST", MNIST, infer(tensor(shape=[100000, 64])), {}, 400,
     "needs 6400000 values, got 64"),
    ("no-data", "POST", MNIST, infer({k: v for k, v in tensor().items() if k != "data"}), {},
     400, "has no 'data'"),
    ("data-short", "POST", MNIST, infer(tensor(data=[0] * 63)), {}, 400,
     "needs 64 values, got 63"),
    ("data-long", "POST", MNIST, infer(tensor(data=[0] * 65)), {}, 400,
     "needs 64 values, got 65"),
    ("ragged", "POST", MNIST, infer(tensor(shape=[2, 64], data=[[0] * 64, [0] * 63])), {},
     400, "does not fit FP32"),
    ("nested-100", "POST", MNIST, nested(100), {}, 400, "does not fit FP32"),
    ("nested-5000", "POST", MNIST, nested(5000), {}, 400, "not valid JSON"),
    ("strings-in-fp32", "POST", MNIST, infer(tensor(data=["a"] * 64)), {}, 400,
     "does not fit FP32"),
    ("objects-in-fp32", "POST", MNIST, infer(tensor(data=[{"a": 1}] * 64)), {}, 400,
     "does not fit FP32"),
    ("uint8-overflow", "POST", MNIST, infer(tensor(datatype="UINT8", data=[256] * 64)), {},
     400, "does not fit UINT8"),
    ("bytes-to-numeric", "POST", MNIST, infer(tensor(datatype="BYTES", data=["a"] * 64)), {},
     400, "not BYTES"),
    ("bytes-not-strings", "POST", MNIST, infer(tensor(datatype="BYTES", data=[1] * 64)), {},
     400, "must be strings"),
    ("wrong-features", "POST", MNIST, infer(tensor(shape=[1, 10], data=[0] * 10)), {}, 400,
     "expects shape [-1, 64], got [1, 10]"),
    ("three-dims", "POST", MNIST, infer(tensor(shape=[1, 8, 8])), {}, 400, "expects shape"),
    ("nan-for-svm", "POST", MNIST, infer(tensor(data=[None] * 64)), {}, 400,
     "the model rejected the input"),
    ("zero-rows", "POST", MNIST, infer(tensor(shape=[0, 64], data=[])), {}, 400,
     "the model rejected the input"),
    ("nan-literal", "POST", MNIST, infer(tensor()).replace(b"0.0,", b"NaN,", 1), {}, 400,
     "not valid JSON"),
    ("infinity-literal", "POST", MNIST, infer(tensor()).replace(b"0.0,", b"Infinity,", 1), {},
     400, "not valid JSON"),
    ("1e999", "POST", MNIST, infer(tensor()).replace(b"0.0,", b"1e999,", 1), {}, 400,
     "not valid JSON"),
    ("duplicate-names", "POST", MNIST, infer(tensor(), tensor()), {}, 400, "unique"),
    ("two-inputs", "POST", MNIST, infer(tensor(), tensor(name="y")), {}, 400,
     "exactly one input tensor, got 2"),
    ("unknown-output", "POST", XGB,
     infer(tensor(shape=[1, 126], data=[0] * 126), outputs=[{"name": "nonsense"}]), {}, 400,
     "unknown output 'nonsense': this model answers predict, predict_proba"),
    ("proba-on-svc", "POST", MNIST, infer(tensor(), outputs=[{"name": "predict_proba"}]), {},
     400, "this model answers predict"),
    ("outputs-string", "POST", MNIST, infer(tensor(), outputs="predict"), {}, 400,
     "'outputs' must be a list"),
    ("output-no-name", "POST", MNIST, infer(tensor(), outputs=[{}]), {}, 400,
     "'outputs' must be a list"),
    ("id-number", "POST", MNIST, infer(tensor(), id=5), {}, 400, "'id' must be a string"),
    ("parameters-list", "POST", MNIST, infer(tensor(), parameters=[]), {}, 400,
     "'parameters' must be an object"),
    ("input-parameters-list", "POST", MNIST, infer(tensor(parameters=[1])), {}, 400,
     "'parameters' must be an object"),
    ("unknown-model", "POST", "/v2/models/nope/infer", infer(tensor()), {}, 404,
     "model 'nope' not found"),
    ("unknown-version", "POST", "/v2/models/mnist-svm/versions/9/infer", infer(tensor()), {},
     404, "has no version '9'"),
    ("traversal-encoded", "POST", "/v2/models/..%2F..%2Fetc%2Fpasswd/infer", infer(tensor()),
     {}, 404, "Not Found"),
    ("traversal-load", "POST", "/v2/repository/models/..%2F..%2Fetc%2Fpasswd/load", b"", {},
     404, "Not Found"),
    ("traversal-dots", "POST", "/v2/repository/models/..%2E/load", b"", {}, 404, "not"),
    ("nul-in-name", "POST", "/v2/models/mnist%00svm/infer", infer(tensor()), {}, 404,
     "not found"),
    ("nul-load", "POST", "/v2/repository/models/mnist%00svm/load", b"", {}, 404,
     "not in the repository"),
    ("unicode-name", "POST", "/v2/models/%E6%A8%A1%E5%9E%8B/infer", infer(tensor()), {}, 404,
     "模型"),
    ("get-infer", "GET", MNIST, b"", {}, 405, "Method Not Allowed"),
    ("put-index", "PUT", "/v2/repository/index", b"{}", {}, 405, "Method Not Allowed"),
    ("delete-model", "DELETE", "/v2/models/mnist-svm", b"", {}, 405, "Method Not Allowed"),
    ("unknown-path", "GET", "/v3/anything", b"", {}, 404, "Not Found"),
    ("over-the-limit", "POST", MNIST, b"[" + b"0," * LIMIT + b"0]", {}, 413, "too large"),
    ("index-ready-string", "POST", "/v2/repository/index", b'{"ready": "yes"}', {}, 400,
     "'ready' must be true or false"),
    ("index-not-object", "POST", "/v2/repository/index", b"[true]", {}, 400,
     "must be a JSON object"),
    ("load-config", "POST", "/v2/repository/models/mnist-svm/load",
     b'{"parameters": {"config": "{}"}}', {}, 400, "'config' is not supported"),
    ("load-file", "POST", "/v2/repository/models/mnist-svm/load",
     b'{"parameters": {"file:1/model.onnx": "AAAA"}}', {}, 400, "is not supported"),
    ("load-parameters-list", "POST", "/v2/repository/models/mnist-svm/load",
     b'{"parameters": [1]}', {}, 400, "'parameters' must be an object"),
    ("unload-dependents-string", "POST", "/v2/repository/models/mnist-svm/unload",
     b'{"parameters": {"unload_dependents": "no"}}', {}, 400, "'unload_dependents'"),
    ("load-unknown", "POST", "/v2/repository/models/nope/load", b"", {}, 404,
     "not in the repository"),
    ("unload-unknown", "POST", "/v2/repository/models/nope/unload", b"", {}, 404, "not in the repository"),
]


def check(status_code: int, content_type: str | None, text: str, status: int,
          fragment: str) -> None:
    assert status_code == status, text[:300]
    assert content_type == "application/json"
    error = orjson.loads(text)["error"]
    assert fragment in error, error
    assert "Traceback" not in error


@pytest.mark.parametrize("method, path, body, headers, status, fragment",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input(client, method, path, body, headers, status, fragment):
    r = client.open(path, method=method, data=body, headers=headers)
    check(r.status_code, r.headers.get("Content-Type"), r.get_data(as_text=True), status,
          fragment)


@pytest.mark.server
def test_a_real_server_answers_the_table_alike(server):
    with requests.Session() as session:
        for case, method, path, body, headers, status, fragment in CASES:
            r = session.request(method, server.url + path, data=body, headers=headers,
                                timeout=30)
            try:
                check(r.status_code, r.headers.get("Content-Type"), r.text, status, fragment)
            except AssertionError as e:
                raise AssertionError(f"{case}: {e}") from None


@pytest.mark.parametrize("content_type", ["application/json", "text/plain",
                                          "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x",
                                          "application/octet-stream", None])
def test_any_content_type_is_read_as_json(client, digits, mnist_model, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    r = client.post(MNIST, data=orjson.dumps(v2_body(digits[:2])), headers=headers)
    assert r.status_code == 200, r.text
    predicted = next(o for o in r.json["outputs"] if o["name"] == "predict")["data"]
    assert predicted == mnist_model.predict(digits[:2]).tolist()


@pytest.mark.server
def test_content_length_over_the_limit_is_refused_unread(server):
    """The 413 comes back although the body was never sent."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST {MNIST} HTTP/1.1\r\nHost: x\r\nContent-Length: {100 << 20}\r\n"
                     "Connection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):  # the server closes when done; timeout 10 s
            chunks.append(chunk)
        reply = b"".join(chunks).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413")
    assert '"error"' in reply


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False,
                                                                      allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=20,
)
tensors = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=5) | json_values,
    "shape": st.lists(st.integers(-3, 70), max_size=4) | json_values,
    "datatype": st.sampled_from(["FP32", "FP64", "INT64", "UINT8", "BOOL", "BYTES", "FP16",
                                 "X"]) | json_values,
    "data": st.lists(st.floats(allow_nan=False, allow_infinity=False) | st.integers(-300, 300)
                     | st.text(max_size=3), max_size=140) | json_values,
    "parameters": json_values,
})
bodies = st.fixed_dictionaries({}, optional={
    "inputs": st.lists(tensors, max_size=3) | json_values,
    "outputs": st.lists(st.fixed_dictionaries({"name": st.sampled_from(
        ["predict", "predict_proba", "x"])}), max_size=2) | json_values,
    "id": json_values,
    "parameters": json_values,
})


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 300)), deadline=None,
          derandomize=not os.environ.get("FUZZ_RANDOM"), database=None,
          suppress_health_check=list(HealthCheck))
@given(body=bodies, model=st.sampled_from(["mnist-svm", "mushroom-xgboost"]))
def test_fuzzed_infer_bodies_never_5xx(client, body, model):
    r = client.post(f"/v2/models/{model}/infer", data=json.dumps(body))
    assert r.status_code in (200, 400), r.get_data(as_text=True)[:300]
    assert r.headers["Content-Type"] == "application/json"
    if r.status_code == 400:
        assert r.json["error"]


@pytest.mark.server
def test_both_models_still_serve_after_all_that(server, digits, mnist_model, mushrooms,
                                                mushroom_model):
    assert output(server.infer("mnist-svm", v2_body(digits[:4]))).ravel().tolist() == \
        mnist_model.predict(digits[:4]).tolist()
    assert output(server.infer("mushroom-xgboost", v2_body(mushrooms))).ravel().tolist() == \
        mushroom_model.predict(mushrooms).tolist()
    assert set(server.index(ready=True)) == {"mnist-svm", "mushroom-xgboost"}
    assert "Traceback" not in server.log.read_text()
