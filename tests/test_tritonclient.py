"""tritonclient.http, the Triton client, works unchanged against Depot."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException


@pytest.fixture
def client(server):
    c = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield c
    c.close()


def test_server_calls(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata()["name"] == "depot"


def test_repository_calls(client, mushrooms):
    names = {e["name"]: e for e in client.get_model_repository_index()}
    assert names["mushroom-xgboost"]["state"] == "READY"
    client.unload_model("mushroom-xgboost")
    try:
        assert not client.is_model_ready("mushroom-xgboost")
        names = {e["name"]: e for e in client.get_model_repository_index()}
        assert names["mushroom-xgboost"]["state"] == "UNAVAILABLE"
        with pytest.raises(InferenceServerException, match="not ready"):
            client.infer("mushroom-xgboost", [_input(mushrooms[:1])])
    finally:
        client.load_model("mushroom-xgboost")
    assert client.is_model_ready("mushroom-xgboost")
    assert client.is_model_ready("mushroom-xgboost", model_version="v0.1.0")


def test_model_metadata(client):
    meta = client.get_model_metadata("mnist-svm")
    assert meta["inputs"][0]["shape"] == [-1, 64]


def _input(x: np.ndarray) -> httpclient.InferInput:
    inp = httpclient.InferInput("input-0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=False)
    return inp


def test_infer_json(client, digits, mnist_model, mushrooms, mushroom_model):
    result = client.infer("mnist-svm", [_input(digits[:16])],
                          outputs=[httpclient.InferRequestedOutput("predict", binary_data=False)])
    assert result.as_numpy("predict").ravel().tolist() == mnist_model.predict(digits[:16]).tolist()

    result = client.infer(
        "mushroom-xgboost", [_input(mushrooms)], model_version="v0.1.0", request_id="abc",
        outputs=[httpclient.InferRequestedOutput("predict_proba", binary_data=False)])
    np.testing.assert_allclose(result.as_numpy("predict_proba"),
                               mushroom_model.predict_proba(mushrooms), rtol=1e-6)
    assert result.get_response()["id"] == "abc"


def test_errors_reach_the_client(client, digits):
    with pytest.raises(InferenceServerException, match="not found"):
        client.get_model_metadata("nope")
    with pytest.raises(InferenceServerException, match="expects shape"):
        client.infer("mnist-svm", [_input(digits[:1, :10])],
                     outputs=[httpclient.InferRequestedOutput("predict", binary_data=False)])
    with pytest.raises(InferenceServerException, match="not in the repository"):
        client.load_model("nope")
