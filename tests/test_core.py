"""app/v2/core.py in-process: what the V2 protocol means, whichever door
asks, over a real registry (SQLite in a temp folder) and the bundled models."""
from __future__ import annotations

import numpy as np
import pytest

from app.errors import BadRequest, ModelNotFound, ModelNotReady, Unauthorized
from app.v2.codec import InferenceRequest, Tensor
from app.v2.core import DataPlane, ModelConfig, TensorConfig
from runtimes.base import InputRejected, RequestedOutput

from conftest import in_process

SVM = "mnist-svm"
XGB = "mushroom-xgboost"


@pytest.fixture(scope="module")
def core(local_app) -> DataPlane:
    return local_app.extensions["depot"].core


def request(x: np.ndarray, outputs: list[RequestedOutput] | None = None) -> InferenceRequest:
    return InferenceRequest("r1", [Tensor("input-0", x)], outputs or [], {})


def infer(core: DataPlane, name: str, x: np.ndarray, **kw) -> dict[str, np.ndarray]:
    with core.inference(name) as call:
        results = call.run(request(x, **kw))
        call.encoded()
    return results


def test_an_inference_answers_what_the_model_answers(core, digits, mnist_model):
    results = infer(core, SVM, digits[:5])
    assert results["predict"].ravel().tolist() == mnist_model.predict(digits[:5]).tolist()


def test_requested_outputs_and_classification(core, mushrooms, mushroom_model):
    results = infer(core, XGB, mushrooms[:3], outputs=[
        RequestedOutput("predict_proba"), RequestedOutput("predict", classification=1)])
    assert np.allclose(results["predict_proba"], mushroom_model.predict_proba(mushrooms[:3]))
    top = [row[0].split(":")[1] for row in results["predict"]]
    assert top == [str(c) for c in mushroom_model.predict(mushrooms[:3])]


def test_statistics_count_successes_and_failures_with_their_phases(tmp_path, digits):
    with in_process(tmp_path) as app:
        core = app.extensions["depot"].core
        for _ in range(3):
            infer(core, SVM, digits[:2])
        with pytest.raises(InputRejected):
            infer(core, SVM, digits[:2, :10])
        (stats,) = core.statistics(SVM)
        assert stats["inference_count"] == 6 and stats["execution_count"] == 3
        durations = stats["inference_stats"]
        assert durations["success"]["count"] == 3 and durations["fail"]["count"] == 1
        for phase in ("compute_input", "compute_infer", "compute_output"):
            assert durations[phase]["count"] == 3 and durations[phase]["ns"] > 0
        assert [s["name"] for s in core.statistics()] == [SVM, XGB]


def test_metadata_and_config_say_the_same(core):
    meta = core.model_metadata(SVM)
    assert (meta.name, meta.platform, meta.versions) == (SVM, "sklearn", ["v0.1.0"])
    assert meta.inputs == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}]
    config = core.model_config(SVM, "v0.1.0")
    assert config == ModelConfig(SVM, "sklearn", "sklearn", 0,
                                 [TensorConfig("input-0", "TYPE_FP32", [-1, 64])],
                                 [TensorConfig(o["name"], f"TYPE_{o['datatype']}", o["shape"])
                                  for o in meta.outputs])


def test_bytes_tensors_are_strings_in_triton_config():
    assert TensorConfig.of({"name": "t", "datatype": "BYTES", "shape": [-1]}) == \
        TensorConfig("t", "TYPE_STRING", [-1])
    assert TensorConfig.of({}) == TensorConfig("", "TYPE_", [])


@pytest.mark.parametrize("call, error, fragment", [
    (lambda c: c.model_metadata("nope"), ModelNotFound, "model 'nope' not found"),
    (lambda c: c.model_config(SVM, "9"), ModelNotFound, "has no version '9'"),
    (lambda c: c.model_ready("nope"), ModelNotFound, "not found"),
    (lambda c: c.inference("nope"), ModelNotFound, "not found"),
    (lambda c: c.statistics(SVM, "9"), ModelNotFound, "has no version '9'"),
    (lambda c: c.index("yes"), BadRequest, "'ready' must be true or false"),
    (lambda c: c.load(SVM, {"config": "{}"}), BadRequest, "'config' is not supported"),
    (lambda c: c.load(SVM, {"file:1/model.onnx": "AAAA"}), BadRequest, "is not supported"),
    (lambda c: c.load(SVM, [1]), BadRequest, "'parameters' must be an object"),
    (lambda c: c.unload(SVM, {"unload_dependents": "no"}), BadRequest, "'unload_dependents'"),
    (lambda c: c.load("nope"), ModelNotFound, "not in the repository"),
    (lambda c: c.unload("nope"), ModelNotFound, "not in the repository"),
], ids=["metadata", "config-version", "ready", "infer", "stats-version", "index-ready",
        "load-config", "load-file", "load-parameters", "unload-dependents", "load-unknown",
        "unload-unknown"])
def test_what_the_core_refuses(core, call, error, fragment):
    with pytest.raises(error) as raised:
        call(core)
    assert fragment in raised.value.message


def test_unload_and_load_hold_at_once(tmp_path, digits, mnist_model):
    with in_process(tmp_path) as app:
        core = app.extensions["depot"].core
        core.unload(SVM, {"unload_dependents": True})
        assert [(e.name, e.state, e.reason) for e in core.index()] == [
            (SVM, "UNAVAILABLE", "unloaded"), (XGB, "READY", "")]
        assert [e.name for e in core.index(True)] == [XGB]
        with pytest.raises(ModelNotReady, match="UNAVAILABLE: unloaded"):
            core.model_ready(SVM)
        with pytest.raises(ModelNotReady):
            core.inference(SVM)
        core.unload(SVM)  # again: still fine
        core.load(SVM, None)
        core.model_ready(SVM)
        assert infer(core, SVM, digits[:3])["predict"].ravel().tolist() == \
            mnist_model.predict(digits[:3]).tolist()


def test_the_key_guards_repository_calls(tmp_path):
    with in_process(tmp_path, models=None, api_key="s3cret") as app:
        core = app.extensions["depot"].core
        for given in (None, "", "s3cret", "Bearer wrong", "bearer s3cret"):
            with pytest.raises(Unauthorized):
                core.authorize(given)
        core.authorize("Bearer s3cret")
    with in_process(tmp_path / "open", models=None) as app:
        app.extensions["depot"].core.authorize(None)


def test_server_metadata_and_readiness(core):
    meta = core.server_metadata()
    assert meta.name == "depot" and "model_repository" in meta.extensions
    assert meta.watcher_pid is None  # no watcher runs in-process
    assert core.unready_reason() is None
