"""Model versions: Triton's numbered folders and MLServer's version strings."""
from __future__ import annotations

import shutil

import joblib
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.datasets import load_digits

from conftest import MODELS, output, run_server, v2_body, wait_until

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """iris/1 is the bundled SVC, iris/2 a logistic regression: their answers differ."""
    src = tmp_path_factory.mktemp("versions-src")
    shutil.copytree(MODELS, src / "models", ignore=shutil.ignore_patterns("*.py"))
    (src / "models" / "iris" / "1").mkdir(parents=True)
    (src / "models" / "iris" / "2").mkdir()
    shutil.copy(MODELS / "mnist-svm" / "model.joblib", src / "models" / "iris" / "1")
    digits = load_digits()
    v2 = LogisticRegression(max_iter=2000).fit(digits.data[:300], digits.target[:300] % 2)
    joblib.dump(v2, src / "models" / "iris" / "2" / "model.joblib")
    with run_server(tmp_path_factory.mktemp("versions"), models=src / "models") as server:
        yield server, joblib.load(MODELS / "mnist-svm" / "model.joblib"), v2


def test_each_version_is_listed(two_versions):
    server, _, _ = two_versions
    entries = [e for e in server.post("/v2/repository/index").json() if e["name"] == "iris"]
    assert entries == [{"name": "iris", "version": "1", "state": "READY", "reason": ""},
                       {"name": "iris", "version": "2", "state": "READY", "reason": ""}]


def test_each_version_serves_its_own_model(two_versions, digits):
    server, v1, v2 = two_versions
    x = digits[:40]
    r1 = server.infer("iris", v2_body(x), version="1")
    r2 = server.infer("iris", v2_body(x), version="2")
    assert output(r1).ravel().tolist() == v1.predict(x).tolist()
    assert output(r2).ravel().tolist() == v2.predict(x).tolist()
    assert v1.predict(x).tolist() != v2.predict(x).tolist()
    assert r1.json()["model_version"] == "1" and r2.json()["model_version"] == "2"
    newest = server.infer("iris", v2_body(x))
    assert newest.json()["model_version"] == "2"
    assert server.get("/v2/models/iris/versions/1/ready").status_code == 200
    assert server.get("/v2/models/iris").json()["versions"] == ["1", "2"]
    assert server.get("/v2/models/iris/versions/2").json()["outputs"][1]["name"] == \
        "predict_proba"


def test_unknown_version_is_404(two_versions, digits):
    server, _, _ = two_versions
    r = server.infer("iris", v2_body(digits[:1]), version="3")
    assert r.status_code == 404 and "has no version '3'" in r.json()["error"]
    assert server.get("/v2/models/iris/versions/3/ready").status_code == 404


def test_unload_and_load_take_every_version(two_versions, digits):
    server, v1, _ = two_versions
    assert server.post("/v2/repository/models/iris/unload").status_code == 200
    states = {e["version"]: e["state"] for e in server.post("/v2/repository/index").json()
              if e["name"] == "iris"}
    assert states == {"1": "UNAVAILABLE", "2": "UNAVAILABLE"}
    r = server.infer("iris", v2_body(digits[:1]), version="1")
    assert r.status_code == 400 and "version '1'" in r.json()["error"]
    assert server.post("/v2/repository/models/iris/load").status_code == 200
    assert output(server.infer("iris", v2_body(digits[:5]), version="1")).ravel().tolist() \
        == v1.predict(digits[:5]).tolist()


def test_a_removed_version_leaves_and_the_default_falls_back(two_versions, digits):
    server, v1, _ = two_versions
    shutil.rmtree(server.models / "iris" / "2")
    wait_until(lambda: [e["version"] for e in server.post("/v2/repository/index").json()
                        if e["name"] == "iris"] == ["1"], timeout=3)
    r = server.infer("iris", v2_body(digits[:5]))
    assert r.json()["model_version"] == "1"
    assert output(r).ravel().tolist() == v1.predict(digits[:5]).tolist()
    assert server.infer("iris", v2_body(digits[:1]), version="2").status_code == 404
