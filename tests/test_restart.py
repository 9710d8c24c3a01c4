"""What a full restart keeps, against real gunicorn: a second server on the
same state folder adopts what the first one left (loaded copies, unloads),
and a fresh state folder starts from the disk."""
from __future__ import annotations

import shutil

import joblib
import orjson
from sklearn.dummy import DummyClassifier

from app.registry import CHANGED_ON_DISK
from conftest import Server, output, v2_body

XGB = "mushroom-xgboost"
MNIST = "mnist-svm"


def events(server: Server) -> set[tuple[str, str]]:
    lines = [orjson.loads(line) for line in server.log.read_text().splitlines()
             if line.startswith("{")]
    return {(l["event"], l["model"]) for l in lines if "event" in l}


def test_a_restart_keeps_what_was_unloaded_and_what_was_loaded(make_server, digits, mnist_model,
                                                                mushrooms):
    with make_server(workers=2) as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
    with make_server(workers=2, models=None) as server:
        index = server.index()
        assert index[XGB] == {"name": XGB, "version": "v0.1.0", "state": "UNAVAILABLE",
                              "reason": "unloaded"}
        r = server.infer(XGB, v2_body(mushrooms[:1]))
        assert r.status_code == 400 and "unloaded" in r.json()["error"]
        assert index[MNIST]["state"] == "READY" and index[MNIST]["reason"] == ""
        for _ in range(10):
            got = output(server.infer(MNIST, v2_body(digits[:4])))
            assert got.ravel().tolist() == mnist_model.predict(digits[:4]).tolist()
        seen = events(server)
        assert ("restore", MNIST) in seen
        assert ("load", MNIST) not in seen and ("load", XGB) not in seen


def test_a_restart_serves_the_loaded_copy_until_a_load(make_server, digits, mnist_model):
    with make_server(workers=2) as server:
        assert server.index()[MNIST]["state"] == "READY"
    sevens = DummyClassifier(strategy="constant", constant=7).fit(digits[:10], [7] * 10)
    joblib.dump(sevens, server.models / MNIST / "model.joblib")
    with make_server(workers=2, models=None) as server:
        assert server.index()[MNIST]["state"] == "READY"
        assert server.index()[MNIST]["reason"] == CHANGED_ON_DISK
        got = output(server.infer(MNIST, v2_body(digits[:6])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:6]).tolist() != [7] * 6
        assert server.post(f"/v2/repository/models/{MNIST}/load").status_code == 200
        assert server.index()[MNIST]["reason"] == ""
        assert output(server.infer(MNIST, v2_body(digits[:6]))).ravel().tolist() == [7] * 6


def test_a_lost_loaded_copy_is_unavailable_until_a_load(make_server, digits, mnist_model):
    with make_server(workers=2) as server:
        assert server.index()[MNIST]["state"] == "READY"
    shutil.rmtree(server.state / "snapshots")
    with make_server(workers=2, models=None) as server:
        entry = server.index()[MNIST]
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"].startswith("the loaded copy could not be restored: ")
        assert entry["reason"].endswith("; call load")
        assert server.infer(MNIST, v2_body(digits[:1])).status_code == 400
        assert server.post(f"/v2/repository/models/{MNIST}/load").status_code == 200
        got = output(server.infer(MNIST, v2_body(digits[:3])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:3]).tolist()


def test_a_fresh_state_folder_starts_from_the_disk(make_server, tmp_path, mushrooms,
                                                   mushroom_model):
    with make_server(workers=2) as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
    with make_server(workers=2, models=None,
                     env={"DEPOT_STATE_DIR": str(tmp_path / "fresh")}) as server:
        assert {e["state"] for e in server.index().values()} == {"READY"}
        got = output(server.infer(XGB, v2_body(mushrooms[:4])))
        assert got.ravel().tolist() == mushroom_model.predict(mushrooms[:4]).tolist()
