"""Switching from MLServer without surprises, against a real 3-worker
server: a raw XGBoost booster answers its own predict, and a runtime of
one's own (docs/runtimes.md, run as written) loads from the model's folder,
fails cleanly, and reloads with new code."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient
import xgboost as xgb

from conftest import ROOT, output, run_server, v2_body, wait_until

pytestmark = pytest.mark.server

RNG = np.random.default_rng(11)
X = RNG.random((200, 5)).astype(np.float32)
DOC = (ROOT / "docs" / "runtimes.md").read_text()


def doc_blocks(language: str) -> list[str]:
    return [body for lang, body in re.findall(r"```(\w*)\n(.*?)```", DOC, re.S)
            if lang == language]


def raw_booster(folder: Path, objective: str, classes: int) -> xgb.Booster:
    """A booster from xgb.train (no scikit-learn wrapper), in MLServer's layout."""
    params = {"objective": objective, "max_depth": 3}
    if classes > 2:
        params["num_class"] = classes
    y = (X[:, 0] * classes).astype(int) % classes
    booster = xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=5)
    folder.mkdir()
    booster.save_model(folder / "model.json")
    (folder / "model-settings.json").write_text(json.dumps(
        {"name": folder.name, "implementation": "mlserver_xgboost.XGBoostModel",
         "parameters": {"uri": "./model.json"}}))
    return booster


def write_user_runtime(folder: Path, module: str, code: str, settings: dict | None = None,
                       **files: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{module}.py").write_text(code)
    (folder / "model-settings.json").write_text(json.dumps(
        settings or {"name": folder.name, "implementation": f"{module}.Model"}))
    for name, text in files.items():
        (folder / name).write_text(text)


RAISES = '''
from runtimes.base import Runtime

class Model(Runtime):
    def load(self):
        raise RuntimeError("the weights are not where they should be")
'''
NOT_A_RUNTIME = "class Model:\n    pass\n"
BROKEN_SYNTAX = "def load(:\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("switching")
    models = tmp / "models"
    models.mkdir()
    boosters = {"raw-binary": raw_booster(models / "raw-binary", "binary:logistic", 2),
                "raw-multi": raw_booster(models / "raw-multi", "multi:softprob", 3)}
    settings, weights = doc_blocks("json")[:2]
    scorer = models / "scorer"
    scorer.mkdir()
    (scorer / "model-settings.json").write_text(settings)
    (scorer / "weights.json").write_text(weights)
    (scorer / "scorer.py").write_text(doc_blocks("python")[0])
    write_user_runtime(models / "raises", "raises", RAISES)
    write_user_runtime(models / "not-a-runtime", "plain", NOT_A_RUNTIME)
    write_user_runtime(models / "syntax", "syntax", BROKEN_SYNTAX)
    (models / "nowhere").mkdir()
    (models / "nowhere" / "model-settings.json").write_text(json.dumps(
        {"name": "nowhere", "implementation": "nowhere_to_be_found.Model"}))
    with run_server(tmp, workers=3, models=None) as s:
        yield s, boosters


def test_a_raw_booster_answers_booster_predict(server):
    s, boosters = server
    client = httpclient.InferenceServerClient(s.url.removeprefix("http://"))
    for name, booster in boosters.items():
        expected = booster.predict(xgb.DMatrix(X[:7]))
        got = output(s.infer(name, v2_body(X[:7])))
        np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-6)
        assert s.infer(name, v2_body(X[:7])).json()["outputs"][0]["datatype"] == "FP32"
        tensor = httpclient.InferInput("input-0", [7, 5], "FP32")
        tensor.set_data_from_numpy(X[:7], binary_data=True)
        result = client.infer(name, [tensor], outputs=[
            httpclient.InferRequestedOutput("predict", binary_data=True),
            httpclient.InferRequestedOutput("predict_proba", binary_data=True)])
        np.testing.assert_allclose(result.as_numpy("predict").reshape(expected.shape), expected,
                                   rtol=1e-6)
        proba = result.as_numpy("predict_proba")
        np.testing.assert_allclose(proba[:, 1] if name == "raw-binary" else proba, expected,
                                   rtol=1e-6)
    meta = s.get("/v2/models/raw-multi").json()
    assert meta["outputs"][0] == {"name": "predict", "datatype": "FP32", "shape": [-1, 3]}


def test_the_documented_runtime_runs_as_written(server):
    s, _ = server
    assert s.index()["scorer"]["state"] == "READY"
    curl = next(b for b in doc_blocks("") if "curl" in b)
    body = json.loads(re.search(r"-d \\\n\s*'(.*)'", curl, re.S).group(1))
    reply = s.post("/v2/models/scorer/infer", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["outputs"][0]["data"] == [4.75]
    x = RNG.random((4, 3))
    np.testing.assert_allclose(output(s.infer("scorer", v2_body(x, "FP64"))).ravel(),
                               x @ [0.5, -1.0, 2.0] + 0.25)
    bad = s.infer("scorer", v2_body(np.array([[1.0, -1.0, 2.0]]), "FP64"))
    assert bad.status_code == 400 and "numbers of 0 or more" in bad.json()["error"]
    wrong = s.infer("scorer", v2_body(x[:, :2], "FP64"))
    assert wrong.status_code == 400 and "[-1, 3]" in wrong.json()["error"]
    assert s.get("/v2/models/scorer").json()["platform"] == "scorer.LinearScorer"


@pytest.mark.parametrize("name, reason", [
    ("raises", "RuntimeError: the weights are not where they should be"),
    ("not-a-runtime", "plain.Model is not a subclass of runtimes.Runtime"),
    ("syntax", "SyntaxError"),
    ("nowhere", "ModuleNotFoundError: No module named 'nowhere_to_be_found'"),
])
def test_a_runtime_that_fails_is_a_failed_load(server, name, reason):
    s, _ = server
    workers = s.worker_pids()
    assert reason in s.index()[name]["reason"]
    reply = s.post(f"/v2/repository/models/{name}/load")
    assert reply.status_code == 400 and reason in reply.json()["error"], reply.text
    entry = s.index()[name]
    assert entry["state"] == "UNAVAILABLE" and reason in entry["reason"]
    assert s.worker_pids() == workers  # no worker died
    assert s.infer("scorer", v2_body(np.ones((1, 3)), "FP64")).status_code == 200


def test_a_reload_runs_the_new_code(server):
    s, _ = server
    scorer = s.models / "scorer"
    code = (scorer / "scorer.py").read_text()
    (scorer / "scorer.py").write_text(code.replace("x @ self.weights + self.bias",
                                                   "-(x @ self.weights + self.bias)"))
    try:
        assert s.post("/v2/repository/models/scorer/load").status_code == 200
        body = v2_body(np.array([[1.0, 2.0, 3.0]]), "FP64")
        got = [output(s.infer("scorer", body)).ravel().tolist() for _ in range(12)]
        assert got == [[-4.75]] * 12  # every worker
    finally:
        (scorer / "scorer.py").write_text(code)
        assert s.post("/v2/repository/models/scorer/load").status_code == 200
    wait_until(lambda: output(s.infer("scorer", v2_body(np.array([[1.0, 2.0, 3.0]]), "FP64")))
               .ravel().tolist() == [4.75])



def test_every_log_line_is_json(server):
    """Runtimes that failed to import or load, and reloads, wrote JSON only."""
    s, _ = server
    assert any(line.get("event") == "fail" for line in s.json_log())
