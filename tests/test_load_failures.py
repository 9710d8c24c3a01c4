"""A model that fails to load never harms the others, and a READY model keeps
serving its previous copy when a reload fails."""
from __future__ import annotations

import shutil

import pytest

from conftest import output, spread, v2_body

pytestmark = pytest.mark.server


def test_corrupt_model_at_startup_and_on_load(make_server, digits, mnist_model, tmp_path):
    models = tmp_path / "src"
    shutil.copytree(__import__("conftest").MODELS, models,
                    ignore=shutil.ignore_patterns("*.py"))
    (models / "broken").mkdir()
    (models / "broken" / "model.joblib").write_bytes(b"this is not a pickle")
    with make_server(models=models) as server:
        entry = server.index()["broken"]
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"].startswith("load failed:")
        r = server.post("/v2/repository/models/broken/load")
        assert r.status_code == 400
        assert "load failed for model 'broken'" in r.json()["error"]
        assert server.index()["broken"]["state"] == "UNAVAILABLE"
        r = server.infer("broken", v2_body(digits[:1]))
        assert r.status_code == 400 and "not ready" in r.json()["error"]
        assert server.index(ready=True).keys() == {"mnist-svm", "mushroom-xgboost"}
        got = output(server.infer("mnist-svm", v2_body(digits[:4])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:4]).tolist()


def test_failed_reload_keeps_the_previous_copy(make_server, mushrooms, mushroom_model):
    with make_server() as server:
        (server.models / "mushroom-xgboost" / "model.json").write_text("{ truncated")
        r = server.post("/v2/repository/models/mushroom-xgboost/load")
        assert r.status_code == 400
        entry = server.index()["mushroom-xgboost"]
        assert entry["state"] == "READY"
        assert entry["reason"].startswith("reload failed:")
        assert entry["reason"].endswith("serving the previous copy")
        expected = mushroom_model.predict(mushrooms).tolist()
        # concurrent requests reach every worker: each serves the old copy
        for reply in spread(lambda: server.infer("mushroom-xgboost", v2_body(mushrooms)), 40):
            assert output(reply).ravel().tolist() == expected


def test_load_of_a_model_missing_from_disk(make_server, digits):
    with make_server() as server:
        shutil.rmtree(server.models / "mnist-svm")
        r = server.post("/v2/repository/models/mnist-svm/load")
        assert r.status_code == 404
        assert "mnist-svm" not in server.index()
        assert server.infer("mnist-svm", v2_body(digits[:1])).status_code == 404
