"""The V2 dataplane over real HTTP: health, metadata, inference, errors."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import output, v2_body

pytestmark = pytest.mark.server


def test_health(server):
    assert server.get("/v2/health/live").json() == {"live": True}
    r = server.get("/v2/health/ready")
    assert r.status_code == 200 and r.json() == {"ready": True}


def test_server_metadata(server):
    meta = server.get("/v2").json()
    assert meta["name"] == "depot"
    assert "model_repository" in meta["extensions"]


@pytest.mark.parametrize("prefix", ["/v2/models/mnist-svm", "/v2/models/mnist-svm/versions/v0.1.0"])
def test_model_metadata_is_inferred_from_the_artifact(server, prefix):
    meta = server.get(prefix).json()
    assert meta["name"] == "mnist-svm"
    assert meta["versions"] == ["v0.1.0"]
    assert meta["platform"] == "sklearn"
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}]


def test_xgboost_metadata(server):
    meta = server.get("/v2/models/mushroom-xgboost").json()
    assert meta["inputs"][0]["shape"] == [-1, 126]
    assert [o["name"] for o in meta["outputs"]] == ["predict", "predict_proba"]
    assert meta["outputs"][1]["shape"] == [-1, 2]


@pytest.mark.parametrize("path", ["/v2/models/mnist-svm/ready",
                                  "/v2/models/mnist-svm/versions/v0.1.0/ready"])
def test_model_ready(server, path):
    r = server.get(path)
    assert r.status_code == 200 and r.json() == {"name": "mnist-svm", "ready": True}


@pytest.mark.parametrize("path", ["/v2/models/nope", "/v2/models/nope/ready",
                                  "/v2/models/mnist-svm/versions/9/ready",
                                  "/v2/models/mnist-svm/versions/9"])
def test_unknown_model_or_version_is_404(server, path):
    r = server.get(path)
    assert r.status_code == 404
    assert r.headers["Content-Type"] == "application/json"
    assert "not found" in r.json()["error"] or "no version" in r.json()["error"]


def test_mnist_predictions_equal_the_models_own(server, digits, mnist_model):
    x = digits[:64]
    r = server.infer("mnist-svm", v2_body(x))
    got = output(r)
    assert got.shape == (64, 1)
    assert got.ravel().tolist() == mnist_model.predict(x).tolist()
    body = r.json()
    assert body["model_name"] == "mnist-svm" and body["model_version"] == "v0.1.0"
    assert body["outputs"][0]["datatype"] == "INT64"
    assert len(body["id"]) == 36  # a generated uuid


def test_mushroom_predictions_and_probabilities(server, mushrooms, mushroom_model):
    body = v2_body(mushrooms, outputs=[{"name": "predict_proba"}, {"name": "predict"}])
    r = server.infer("mushroom-xgboost", body, version="v0.1.0")
    assert [o["name"] for o in r.json()["outputs"]] == ["predict_proba", "predict"]
    assert output(r).ravel().tolist() == mushroom_model.predict(mushrooms).tolist()
    proba = output(r, "predict_proba")
    assert proba.shape == (32, 2)
    np.testing.assert_allclose(proba, mushroom_model.predict_proba(mushrooms), rtol=1e-6)


def test_request_id_is_echoed(server, digits):
    r = server.infer("mnist-svm", v2_body(digits[:1], id="req-42"))
    assert r.json()["id"] == "req-42"


def test_nested_data_equals_flat(server, digits):
    flat = v2_body(digits[:3])
    nested = v2_body(digits[:3])
    nested["inputs"][0]["data"] = digits[:3].tolist()
    assert output(server.infer("mnist-svm", flat)).tolist() == \
        output(server.infer("mnist-svm", nested)).tolist()


@pytest.mark.parametrize("datatype", ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8",
                                      "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"])
def test_every_numeric_datatype(server, digits, mnist_model, datatype):
    from app.v2.codec import DTYPES

    x = digits[:8].astype(DTYPES[datatype])
    body = v2_body(x, datatype)
    got = output(server.infer("mnist-svm", body))
    assert got.ravel().tolist() == mnist_model.predict(x).tolist()


def test_wrong_method_and_unknown_path(server):
    r = server.get("/v2/models/mnist-svm/infer")
    assert r.status_code == 405 and r.json() == {"error": "Method Not Allowed"}
    assert "POST" in r.headers["Allow"]
    r = server.get("/v2/nothing/here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}


def test_body_is_json_whatever_the_content_type(server, digits, mnist_model):
    import orjson

    r = server.post("/v2/models/mnist-svm/infer", data=orjson.dumps(v2_body(digits[:2])),
                    headers={"Content-Type": "text/plain"})
    assert output(r).ravel().tolist() == mnist_model.predict(digits[:2]).tolist()


def test_body_over_the_limit_is_413(make_server):
    with make_server(workers=2, env={"DEPOT_MAX_BODY_BYTES": "4K"}) as server:
        r = server.post("/v2/models/mnist-svm/infer", data=b"[" + b"0," * 4000 + b"0]")
        assert r.status_code == 413
        assert "error" in r.json()
        assert server.get("/v2/health/ready").status_code == 200
