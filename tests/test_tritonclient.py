"""tritonclient.http, the Triton client, works unchanged against Depot."""
from __future__ import annotations

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

pytestmark = pytest.mark.server


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


def test_model_config(client):
    """get_model_config (and the tools built on it) reads Triton's
    configuration, made from the same metadata."""
    meta = client.get_model_metadata("mnist-svm")
    config = client.get_model_config("mnist-svm")
    assert config["name"] == "mnist-svm" and config["max_batch_size"] == 0
    assert config["platform"] == meta["platform"] == "sklearn"
    for ours, theirs in (("input", "inputs"), ("output", "outputs")):
        assert [(t["name"], t["data_type"], t["dims"]) for t in config[ours]] == [
            (t["name"], f"TYPE_{t['datatype']}", t["shape"]) for t in meta[theirs]]
    assert config["input"][0] == {"name": "input-0", "data_type": "TYPE_FP32", "dims": [-1, 64]}
    assert config["output"][0]["data_type"] == "TYPE_INT64"
    assert client.get_model_config("mnist-svm", model_version="v0.1.0") == config
    with pytest.raises(InferenceServerException, match="not found"):
        client.get_model_config("nope")


def test_v2_with_a_trailing_slash_is_the_server_metadata(server):
    assert server.get("/v2/").json() == server.get("/v2").json()


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
