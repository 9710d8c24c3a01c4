"""Drop-in for MLServer and Triton clients: binary tensors, compression,
content types and classification, against a real multi-worker server."""
from __future__ import annotations

import base64
import gzip
import json
import shutil
import zlib

import joblib
import numpy as np
import orjson
import pandas as pd
import pytest
import tritonclient.http as httpclient
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.linear_model import LinearRegression
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from tritonclient.utils import InferenceServerException

from sklearn.datasets import load_digits

from conftest import MODELS, output, run_server, v2_body

pytestmark = pytest.mark.server

TEXTS = ["cheap pills now", "meeting at noon", "win money fast", "lunch tomorrow?",
         "free prize inside", "see you at the office", "cheap money prize", "notes from today"]
LABELS = ["spam", "ham", "spam", "ham", "spam", "ham", "spam", "ham"]
PEOPLE = pd.DataFrame({"age": [23.0, 45.0, 31.0, 60.0, 38.0, 27.0],
                       "colour": ["red", "blue", "red", "green", "blue", "green"]})
BOUGHT = [1, 0, 1, 0, 0, 1]


@pytest.fixture(scope="module")
def extra_models(tmp_path_factory):
    src = tmp_path_factory.mktemp("dropin-src") / "models"
    shutil.copytree(MODELS, src, ignore=shutil.ignore_patterns("*.py"))
    text = make_pipeline(TfidfVectorizer(), LogisticRegression()).fit(TEXTS, LABELS)
    joblib.dump(text, src / "text.joblib")
    frame = make_pipeline(
        ColumnTransformer([("num", StandardScaler(), ["age"]),
                           ("cat", OneHotEncoder(handle_unknown="ignore"), ["colour"])]),
        LogisticRegression()).fit(PEOPLE, BOUGHT)
    (src / "people").mkdir()
    joblib.dump(frame, src / "people" / "model.joblib")
    (src / "people" / "model-settings.json").write_text(json.dumps(
        {"name": "people", "implementation": "mlserver_sklearn.SKLearnModel",
         "inputs": [{"name": "age", "datatype": "FP64", "shape": [-1, 1]},
                    {"name": "colour", "datatype": "BYTES", "shape": [-1]}],
         "parameters": {"uri": "./model.joblib", "content_type": "pd",
                        "extra": {"predict_fn": "predict_proba"}}}))
    digits = load_digits().data
    pca = PCA(n_components=3).fit(digits)
    joblib.dump(pca, src / "pca.joblib")
    regressor = LinearRegression().fit(digits, digits.sum(axis=1))
    joblib.dump(regressor, src / "regressor.pkl")
    return src, {"text": text, "people": frame, "pca": pca, "regressor": regressor}


@pytest.fixture(scope="module")
def server(extra_models, tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("dropin"), models=extra_models[0]) as s:
        yield s


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def _numeric_input(x, datatype, binary=True):
    inp = httpclient.InferInput("input-0", list(x.shape), datatype)
    inp.set_data_from_numpy(x, binary_data=binary)
    return inp


# -- binary tensors with tritonclient's defaults -------------------------------------

@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8",
                                      "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"])
@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_every_numeric_datatype(client, digits, mnist_model, datatype, binary):
    from tritonclient.utils import triton_to_np_dtype

    x = digits[:16].astype(triton_to_np_dtype(datatype))
    result = client.infer("mnist-svm", [_numeric_input(x, datatype, binary)])
    assert result.as_numpy("predict").ravel().tolist() == mnist_model.predict(x).tolist()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_bytes_in_and_out(client, extra_models, binary):
    text = extra_models[1]["text"]
    x = np.array(TEXTS, dtype=object).reshape(-1, 1)
    inp = httpclient.InferInput("text", [len(TEXTS)], "BYTES")
    inp.set_data_from_numpy(x.ravel(), binary_data=binary)
    out = httpclient.InferRequestedOutput("predict", binary_data=binary)
    result = client.infer("text", [inp], outputs=[out])
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict").ravel()]
    assert got == text.predict(TEXTS).tolist()


def test_tritonclient_binary_xgboost_probabilities(client, mushrooms, mushroom_model):
    result = client.infer("mushroom-xgboost", [_numeric_input(mushrooms, "FP32")],
                          outputs=[httpclient.InferRequestedOutput("predict_proba")])
    np.testing.assert_allclose(result.as_numpy("predict_proba"),
                               mushroom_model.predict_proba(mushrooms), rtol=1e-6)
    assert result.get_output("predict_proba")["parameters"]["binary_data_size"] == 32 * 2 * 4


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compression(client, digits, mnist_model, algorithm):
    x = digits[:300]
    result = client.infer("mnist-svm", [_numeric_input(x, "FP32")],
                          request_compression_algorithm=algorithm,
                          response_compression_algorithm=algorithm)
    assert result.as_numpy("predict").ravel().tolist() == mnist_model.predict(x).tolist()


def test_binary_request_by_hand(server, digits, mnist_model):
    x = digits[:3].astype(np.float32)
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [3, 64], "datatype": "FP32",
                                       "parameters": {"binary_data_size": x.nbytes}}],
                           "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]})
    r = server.post("/v2/models/mnist-svm/infer", data=header + x.tobytes(),
                    headers={"Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    length = int(r.headers["Inference-Header-Content-Length"])
    meta = orjson.loads(r.content[:length])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 3 * 8
    got = np.frombuffer(r.content[length:], dtype="<i8")
    assert got.tolist() == mnist_model.predict(x).tolist()


def _binary_body(size_claimed: int, payload: bytes, header_extra: int = 0):
    header = orjson.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                       "parameters": {"binary_data_size": size_claimed}}]})
    return header + payload, str(len(header) + header_extra)


@pytest.mark.parametrize("claimed, payload, extra, status, fragment", [
    (256, bytes(256), 10_000, 400, "exceeds the body"),
    (256, bytes(200), 0, 400, "run past the end"),
    (256, bytes(300), 0, 400, "no input's 'binary_data_size' accounts for"),
    (200, bytes(200), 0, 400, "needs 256 bytes, got 200"),
    (256, bytes(256), -5, 400, "not valid JSON"),
])
def test_binary_sizes_must_add_up(server, claimed, payload, extra, status, fragment):
    body, length = _binary_body(claimed, payload, extra)
    r = server.post("/v2/models/mnist-svm/infer", data=body,
                    headers={"Inference-Header-Content-Length": length})
    assert r.status_code == status, r.text
    assert fragment in r.json()["error"]


@pytest.mark.parametrize("value, fragment", [("0", "raw binary requests are not supported"),
                                             ("x", "must be an integer"),
                                             ("-3", "raw binary requests")])
def test_bad_header_values(server, value, fragment):
    r = server.post("/v2/models/mnist-svm/infer", data=b"{}",
                    headers={"Inference-Header-Content-Length": value})
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_binary_size_without_the_header(server):
    body, _ = _binary_body(256, b"")
    r = server.post("/v2/models/mnist-svm/infer", data=body)
    assert r.status_code == 400 and "Inference-Header-Content-Length" in r.json()["error"]


# -- compression by hand -----------------------------------------------------------------

@pytest.mark.parametrize("coding, squash", [("gzip", gzip.compress), ("deflate", zlib.compress)])
def test_compressed_request_and_response(server, digits, mnist_model, coding, squash):
    body = orjson.dumps(v2_body(digits[:1000]))
    r = server.post("/v2/models/mnist-svm/infer", data=squash(body),
                    headers={"Content-Encoding": coding, "Accept-Encoding": coding})
    assert r.headers["Content-Encoding"] == coding  # requests inflates it for us
    assert output(r).ravel().tolist() == mnist_model.predict(digits[:1000]).tolist()


def test_a_zip_bomb_is_413(make_server):
    with make_server(workers=2, env={"DEPOT_MAX_BODY_BYTES": "1M"}) as server:
        bomb = gzip.compress(b"[" * (200 << 20))  # 200 MiB inflated, 200 KiB sent
        r = server.post("/v2/models/mnist-svm/infer", data=bomb,
                        headers={"Content-Encoding": "gzip"})
        assert r.status_code == 413 and "inflates past the limit" in r.json()["error"]
        assert server.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize("data, coding, status, fragment", [
    (b"not gzip at all", "gzip", 400, "not valid gzip"),
    (gzip.compress(b"{}")[:-6], "gzip", 400, "cut short"),
    (b"{}", "br", 415, "'br' is not supported"),
])
def test_bad_compressed_bodies(server, data, coding, status, fragment):
    r = server.post("/v2/models/mnist-svm/infer", data=data, headers={"Content-Encoding": coding})
    assert r.status_code == status and fragment in r.json()["error"]


# -- MLServer content types ---------------------------------------------------------------

def _people_body(request_type="pd", **extra):
    return {"parameters": {"content_type": request_type} if request_type else {},
            "inputs": [{"name": "age", "shape": [6, 1], "datatype": "FP64",
                        "data": PEOPLE["age"].tolist()},
                       {"name": "colour", "shape": [6], "datatype": "BYTES",
                        "data": PEOPLE["colour"].tolist()}], **extra}


@pytest.mark.parametrize("request_type", ["pd", None])  # None: the model-settings default
def test_dataframe_pipeline(server, extra_models, request_type):
    model = extra_models[1]["people"]
    r = server.infer("people", _people_body(request_type))
    got = output(r, "predict_proba")  # extra.predict_fn picks the default output
    np.testing.assert_allclose(got, model.predict_proba(PEOPLE), rtol=1e-9)
    r = server.infer("people", _people_body(outputs=[{"name": "predict"}]))
    assert output(r).ravel().tolist() == model.predict(PEOPLE).tolist()


def test_dataframe_with_a_missing_column_is_400(server):
    body = _people_body()
    body["inputs"] = body["inputs"][:1]
    r = server.infer("people", body)
    assert r.status_code == 400 and "colour" in r.json()["error"]


def test_str_request_content_type(server, extra_models):
    body = {"parameters": {"content_type": "str"},
            "inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES",
                        "data": TEXTS}]}
    r = server.infer("text", body)
    assert output(r).ravel().tolist() == extra_models[1]["text"].predict(TEXTS).tolist()
    assert r.json()["outputs"][0]["datatype"] == "BYTES"


def test_base64_input_content_type(server, extra_models):
    encoded = [base64.b64encode(t.encode()).decode() for t in TEXTS]
    body = {"inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES",
                        "parameters": {"content_type": "base64"}, "data": encoded}]}
    r = server.infer("text", body)
    assert output(r).ravel().tolist() == extra_models[1]["text"].predict(TEXTS).tolist()


@pytest.mark.parametrize("body, fragment", [
    ({"parameters": {"content_type": "xml"}}, "unknown request content_type 'xml'"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["%%"],
                  "parameters": {"content_type": "base64"}}]}, "not base64"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "FP32", "data": [1],
                  "parameters": {"content_type": "str"}}]}, "needs BYTES data"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["x"],
                  "parameters": {"content_type": "datetime"}}]}, "not ISO-8601"),
    ({"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["x"],
                  "parameters": {"content_type": "yaml"}}]}, "unknown content_type 'yaml'"),
])
def test_bad_content_types(server, body, fragment):
    full = {"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": ["x"]}], **body}
    r = server.infer("text", full)
    assert r.status_code == 400 and fragment in r.json()["error"]


def test_datetime_content_type_reaches_the_model(make_server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    days = make_pipeline(  # datetime64 -> ns since the epoch -> one column, all picklable
        FunctionTransformer(np.asarray, kw_args={"dtype": "int64"}),
        FunctionTransformer(np.reshape, kw_args={"shape": (-1, 1)}),
        StandardScaler(), LogisticRegression())
    stamps = np.array(["2024-01-01", "2024-06-01", "2025-01-01", "2025-06-01"],
                      dtype="datetime64[ns]")
    days.fit(stamps, [0, 0, 1, 1])
    joblib.dump(days, src / "days.joblib")
    with make_server(workers=2, models=src) as server:
        body = {"inputs": [{"name": "when", "shape": [4], "datatype": "BYTES",
                            "parameters": {"content_type": "datetime"},
                            "data": ["2024-01-01T00:00:00", "2024-06-01", "2025-01-01",
                                     "2025-06-01"]}]}
        r = server.infer("days", body)
        assert output(r).ravel().tolist() == days.predict(stamps).tolist()


# -- outputs and classification ------------------------------------------------------------

def test_unknown_output_lists_the_allowed_ones(server):
    r = server.infer("people", _people_body(outputs=[{"name": "predict"},
                                                     {"name": "predict_log_proba"}]))
    assert r.status_code == 400
    assert "predict, predict_proba" in r.json()["error"]


def test_transform_output(server, extra_models, digits):
    r = server.infer("pca", v2_body(digits[:5]))  # a transformer: transform is its default
    np.testing.assert_allclose(output(r, "transform"), extra_models[1]["pca"].transform(digits[:5]),
                               rtol=1e-5)


def test_predict_proba_on_a_regressor_is_400(server, extra_models, digits):
    r = server.infer("regressor", v2_body(digits[:2], outputs=[{"name": "predict_proba"}]))
    assert r.status_code == 400 and "this model answers predict" in r.json()["error"]
    got = output(server.infer("regressor", v2_body(digits[:2])))
    np.testing.assert_allclose(got.ravel(), extra_models[1]["regressor"].predict(digits[:2]),
                               rtol=1e-5)


def test_declared_metadata_is_served(server):
    meta = server.get("/v2/models/people").json()
    assert [i["name"] for i in meta["inputs"]] == ["age", "colour"]
    assert meta["outputs"][0]["name"] == "predict"


def test_classification_top_k(server, client, digits, mushrooms, mushroom_model, extra_models):
    result = client.infer("mushroom-xgboost", [_numeric_input(mushrooms, "FP32")],
                          outputs=[httpclient.InferRequestedOutput("predict_proba",
                                                                    class_count=2)])
    proba = mushroom_model.predict_proba(mushrooms)
    got = result.as_numpy("predict_proba")
    assert got.shape == (32, 2)
    for row, scores in zip(got, proba):
        order = np.argsort(-scores, kind="stable")
        assert [int(v.decode().split(":")[1]) for v in row] == order.tolist()
        assert [float(v.decode().split(":")[0]) for v in row] == \
            pytest.approx(scores[order].tolist(), abs=1e-6)

    body = {"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": TEXTS[:2]}],
            "outputs": [{"name": "predict", "parameters": {"classification": 1}}]}
    r = server.infer("text", body)
    top = output(r).ravel().tolist()
    model = extra_models[1]["text"]
    expected = [f"{p.max():f}:{p.argmax()}:{model.classes_[p.argmax()]}"
                for p in model.predict_proba(TEXTS[:2])]
    assert top == expected


def test_classification_needs_a_count(server, digits):
    body = v2_body(digits[:1], outputs=[{"name": "predict",
                                          "parameters": {"classification": "two"}}])
    r = server.infer("mnist-svm", body)
    assert r.status_code == 400 and "'classification'" in r.json()["error"]


def test_errors_reach_tritonclient_with_binary(client, digits):
    with pytest.raises(InferenceServerException, match="expects shape"):
        client.infer("mnist-svm", [_numeric_input(digits[:2, :10].copy(), "FP32")])
