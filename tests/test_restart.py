"""What a full restart keeps, against real gunicorn: a second server on the
same state folder adopts what the first one left (loaded copies, unloads),
and a fresh state folder starts from the disk."""
from __future__ import annotations

import shutil

import joblib
import pytest
from sklearn.dummy import DummyClassifier

from app.registry import CHANGED_ON_DISK, NOT_SERVED_HERE

from conftest import Server, output, v2_body

pytestmark = pytest.mark.server

XGB = "mushroom-xgboost"
MNIST = "mnist-svm"


def events(server: Server) -> set[tuple[str, str]]:
    return set(server.events())


@pytest.mark.slow
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


def test_a_lost_loaded_copy_is_made_again_from_the_same_bytes(make_server, digits, mnist_model):
    with make_server(workers=2) as server:
        assert server.index()[MNIST]["state"] == "READY"
    shutil.rmtree(server.state / "snapshots")
    with make_server(workers=2, models=None) as server:
        assert server.index()[MNIST] == {"name": MNIST, "version": "v0.1.0", "state": "READY",
                                         "reason": ""}
        got = output(server.infer(MNIST, v2_body(digits[:3])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:3]).tolist()
        assert ("restore", MNIST) in events(server)


def test_a_lost_loaded_copy_of_other_bytes_is_refused_until_a_load(make_server, digits):
    with make_server(workers=2) as server:
        assert server.index()[MNIST]["state"] == "READY"
    shutil.rmtree(server.state / "snapshots")
    sevens = DummyClassifier(strategy="constant", constant=7).fit(digits[:10], [7] * 10)
    joblib.dump(sevens, server.models / MNIST / "model.joblib")
    with make_server(workers=2, models=None) as server:
        entry = server.index()[MNIST]
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"].startswith(NOT_SERVED_HERE + "this host's models folder holds "
                                          "other bytes than the load published")
        assert entry["reason"].endswith("; call load to publish it")
        assert server.index(ready=True).get(MNIST) is None
        r = server.infer(MNIST, v2_body(digits[:1]))
        assert r.status_code == 400 and "other bytes" in r.json()["error"], r.text
        assert server.get(f"/v2/models/{MNIST}/ready").status_code == 400
        assert ("refuse", MNIST) in events(server)
        assert server.post(f"/v2/repository/models/{MNIST}/load").status_code == 200
        assert server.index()[MNIST]["state"] == "READY"
        assert output(server.infer(MNIST, v2_body(digits[:3]))).ravel().tolist() == [7] * 3


def test_a_fresh_state_folder_starts_from_the_disk(make_server, tmp_path, mushrooms,
                                                   mushroom_model):
    with make_server(workers=2) as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
    with make_server(workers=2, models=None,
                     env={"DEPOT_STATE_DIR": str(tmp_path / "fresh")}) as server:
        assert {e["state"] for e in server.index().values()} == {"READY"}
        got = output(server.infer(XGB, v2_body(mushrooms[:4])))
        assert got.ravel().tolist() == mushroom_model.predict(mushrooms[:4]).tolist()
