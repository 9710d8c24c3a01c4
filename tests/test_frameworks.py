"""The runtimes MLServer users have (LightGBM, CatBoost, ONNX Runtime,
MLflow), each a model trained here in MLServer's layout (a folder with its
``model-settings.json``), served by a real 3-worker server and answering what
its library answers on the same rows, through ``requests`` and
``tritonclient.http``. (tests/test_framework_runtimes.py covers each runtime
in-process, objective by objective.)"""
from __future__ import annotations

import json
from pathlib import Path

import catboost
import lightgbm
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import onnxruntime
import pandas as pd
import pytest
import tritonclient.http as httpclient
from mlflow.models import infer_signature
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from conftest import output, run_server, v2_body

pytestmark = pytest.mark.server

RNG = np.random.default_rng(5)
X = RNG.random((300, 4)).astype(np.float32)
Y = (X[:, 0] + X[:, 1] > 1).astype(int)
Y3 = (X[:, 2] * 3).astype(int)
ROWS = X[:9]
COLUMNS = ["a", "b", "c", "d"]


def mlserver_folder(models: Path, name: str, implementation: str, uri: str) -> Path:
    folder = models / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model-settings.json").write_text(json.dumps(
        {"name": name, "implementation": implementation, "parameters": {"uri": uri}}))
    return folder


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Every model, with what its own library predicts for ROWS."""
    tmp = tmp_path_factory.mktemp("frameworks")
    models = tmp / "models"
    expected: dict[str, dict[str, np.ndarray]] = {}

    booster = lightgbm.train({"objective": "multiclass", "num_class": 3, "verbose": -1,
                              "num_leaves": 7}, lightgbm.Dataset(X, Y3), num_boost_round=8)
    folder = mlserver_folder(models, "lgbm", "mlserver_lightgbm.LightGBMModel", "./model.bst")
    booster.save_model(str(folder / "model.bst"))
    expected["lgbm"] = {"predict": booster.predict(ROWS), "predict_proba": booster.predict(ROWS)}

    cat = catboost.CatBoostClassifier(iterations=20, depth=3, verbose=False,
                                      allow_writing_files=False, random_seed=0).fit(X, Y)
    folder = mlserver_folder(models, "cat", "mlserver_catboost.CatboostModel", "./model.cbm")
    cat.save_model(str(folder / "model.cbm"))
    expected["cat"] = {"predict": cat.predict(ROWS), "predict_proba": cat.predict_proba(ROWS)}

    pipeline = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    onnx_model = to_onnx(pipeline, X[:1], options={id(pipeline.steps[-1][1]): {"zipmap": False}})
    folder = mlserver_folder(models, "onnx-pipeline", "mlserver_onnx.OnnxModel", "./model.onnx")
    (folder / "model.onnx").write_bytes(onnx_model.SerializeToString())
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"))
    label, probabilities = session.run(None, {session.get_inputs()[0].name: ROWS})
    assert (label == pipeline.predict(ROWS)).all()
    expected["onnx-pipeline"] = {"label": label, "probabilities": probabilities}

    frame = pd.DataFrame(X, columns=COLUMNS)
    forest = make_pipeline(StandardScaler(), LogisticRegression()).fit(frame, Y)
    folder = mlserver_folder(models, "flow", "mlserver_mlflow.MLflowRuntime", "./model")
    mlflow.sklearn.save_model(forest, folder / "model",
                              signature=infer_signature(frame, forest.predict(frame)))
    expected["flow"] = {"predict": mlflow.pyfunc.load_model(str(folder / "model")).predict(
        pd.DataFrame(ROWS, columns=COLUMNS))}

    with run_server(tmp, workers=3, models=None) as server:
        yield server, expected


def infer_triton(server, name: str, outputs: list[str]) -> dict[str, np.ndarray]:
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    tensor = httpclient.InferInput("input-0", list(ROWS.shape), "FP32")
    tensor.set_data_from_numpy(ROWS, binary_data=True)
    result = client.infer(name, [tensor], outputs=[
        httpclient.InferRequestedOutput(o, binary_data=True) for o in outputs])
    return {o: result.as_numpy(o) for o in outputs}


@pytest.mark.parametrize("name", ["lgbm", "cat", "onnx-pipeline", "flow"])
def test_each_runtime_answers_what_its_library_answers(served, name):
    server, expected = served
    assert server.index()[name]["state"] == "READY", server.index()[name]
    wanted = expected[name]
    by_triton = infer_triton(server, name, list(wanted))
    for out, truth in wanted.items():
        reply = server.post(f"/v2/models/{name}/infer", json={
            **v2_body(ROWS), "outputs": [{"name": out}]})
        assert reply.status_code == 200, reply.text
        for got in (output(reply, out), by_triton[out]):
            if truth.dtype.kind in "fc":
                np.testing.assert_allclose(got.reshape(truth.shape), truth, rtol=1e-5)
            else:
                np.testing.assert_array_equal(got.reshape(truth.shape), truth)


def test_the_runtimes_say_what_they_take(served):
    server, _ = served
    platforms = {name: server.get(f"/v2/models/{name}").json()["platform"]
                 for name in ("lgbm", "cat", "onnx-pipeline", "flow")}
    assert platforms == {"lgbm": "lightgbm", "cat": "catboost", "onnx-pipeline": "onnx",
                         "flow": "mlflow"}
    onnx_meta = server.get("/v2/models/onnx-pipeline").json()
    assert [(i["datatype"], i["shape"]) for i in onnx_meta["inputs"]] == [("FP32", [-1, 4])]
    assert [o["name"] for o in onnx_meta["outputs"]] == ["label", "probabilities"]
    flow = server.get("/v2/models/flow").json()
    assert [i["name"] for i in flow["inputs"]] == COLUMNS
    # a wrong shape is the client's 400, from every runtime
    for name in platforms:
        reply = server.infer(name, v2_body(ROWS[:, :3]))
        assert reply.status_code == 400, (name, reply.text)


def test_an_mlflow_model_takes_a_dataframe(served):
    server, expected = served
    body = {"parameters": {"content_type": "pd"}, "inputs": [
        {"name": c, "datatype": "FP32", "shape": [len(ROWS)], "data": ROWS[:, i].tolist()}
        for i, c in enumerate(COLUMNS)]}
    reply = server.post("/v2/models/flow/infer", json=body)
    assert reply.status_code == 200, reply.text
    np.testing.assert_array_equal(output(reply).ravel(), expected["flow"]["predict"])


def test_an_mlflow_model_reloads_from_its_folder(served):
    """The MLflow folder is the model: a reload copies all of it again."""
    server, expected = served
    for _ in range(2):
        assert server.post("/v2/repository/models/flow/load").status_code == 200
    np.testing.assert_array_equal(output(server.infer("flow", v2_body(ROWS))).ravel(),
                                  expected["flow"]["predict"])


def test_every_log_line_is_json(served):
    """MLflow's own log lines (a dependency mismatch, extra columns) too."""
    server, _ = served
    reply = server.post("/v2/models/flow/infer", json={
        "parameters": {"content_type": "pd"}, "inputs": [
            {"name": c, "datatype": "FP32", "shape": [1], "data": [0.5]}
            for c in [*COLUMNS, "extra"]]})
    assert reply.status_code == 200, reply.text
    lines = server.json_log()
    assert any(line.get("logger", "").startswith("mlflow") for line in lines)
