"""The seed walkthrough of the Model Repository extension, step by step."""
from __future__ import annotations

import shlex

import orjson
import pytest
import requests

from conftest import ROOT, output, v2_body

pytestmark = pytest.mark.server

XGB = "mushroom-xgboost"


def test_seed_walkthrough(server, mushrooms, mushroom_model):
    index = server.index()
    assert index["mnist-svm"] == {"name": "mnist-svm", "version": "v0.1.0",
                                  "state": "READY", "reason": ""}
    assert index[XGB]["state"] == "READY"

    r = server.post(f"/v2/repository/models/{XGB}/unload")
    assert r.status_code == 200, r.text
    try:
        entry = server.index()[XGB]
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"] == "unloaded"
        assert entry["version"] == "v0.1.0"
        assert list(server.index(ready=True)) == ["mnist-svm"]

        r = server.infer(XGB, v2_body(mushrooms[:2]))
        assert r.status_code == 400
        assert r.headers["Content-Type"] == "application/json"
        assert "not ready" in r.json()["error"] and "unloaded" in r.json()["error"]
        assert server.get(f"/v2/models/{XGB}/ready").status_code == 400
    finally:
        r = server.post(f"/v2/repository/models/{XGB}/load")
    assert r.status_code == 200, r.text
    assert server.index()[XGB] == {"name": XGB, "version": "v0.1.0", "state": "READY", "reason": ""}
    assert set(server.index(ready=True)) == {"mnist-svm", XGB}
    got = output(server.infer(XGB, v2_body(mushrooms)))
    assert got.ravel().tolist() == mushroom_model.predict(mushrooms).tolist()


def test_the_readme_walkthrough_runs_as_written(server):
    """Every curl line of the README's walkthrough, sent as written (its
    -d body or @file), in order: each is answered, and the error shown
    after the unload is the one the server sends."""
    block = (ROOT / "README.md").read_text().split("## The walkthrough", 1)[1].split("```")[1]
    lines = block.replace("\\\n", " ").splitlines()
    seen = []
    try:
        for i, line in enumerate(lines):
            if not line.startswith("curl"):
                continue
            words = shlex.split(line)
            url = next(w for w in words if w.startswith("localhost:8080"))
            body = words[words.index("-d") + 1] if "-d" in words else ""
            if body.startswith("@"):
                body = (ROOT / body[1:]).read_text()
            r = requests.post(server.url + url.removeprefix("localhost:8080"), data=body,
                              timeout=30)
            shown = lines[i + 1] if i + 1 < len(lines) else ""
            seen.append((r.status_code, r.text, shown))
    finally:
        server.post(f"/v2/repository/models/{XGB}/load")
    refused = [(code, text, shown) for code, text, shown in seen if code == 400]
    assert len(refused) == 1, seen
    code, text, shown = refused[0]
    assert shown == f"# 400 {text}", (shown, text)
    assert [code for code, _, _ in seen] == [200, 200, 200, 400, 200, 200]
    assert orjson.loads(seen[-1][1])["outputs"][0]["data"] == [0]


@pytest.mark.parametrize("path", ["/v2/repository/index",
                                  f"/v2/repository/models/{XGB}/load",
                                  f"/v2/repository/models/{XGB}/unload"])
def test_empty_body_means_empty_object(server, path):
    """tritonclient POSTs no body and no Content-Type; MLServer answers 422."""
    try:
        r = server.post(path, data=b"")
        assert r.status_code == 200, r.text
        assert r.headers["Content-Type"] == "application/json"
    finally:
        assert server.post(f"/v2/repository/models/{XGB}/load").status_code == 200


def test_index_body_is_json_whatever_the_content_type(server):
    r = server.post("/v2/repository/index", data=b'{"ready": true}',
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200
    assert all(e["state"] == "READY" for e in r.json())


def test_ready_false_lists_everything(server):
    assert set(server.index(ready=False)) == {"mnist-svm", XGB}


@pytest.mark.parametrize("body, fragment", [
    (b'{"ready": "yes"}', "'ready' must be true or false"),
    (b'{"ready":', "not valid JSON"),
    (b'[1, 2]', "must be a JSON object"),
])
def test_bad_index_bodies(server, body, fragment):
    r = server.post("/v2/repository/index", data=body)
    assert r.status_code == 400
    assert fragment in r.json()["error"]


def test_unload_twice_is_idempotent(server):
    try:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        assert server.index()[XGB]["state"] == "UNAVAILABLE"
    finally:
        assert server.post(f"/v2/repository/models/{XGB}/load").status_code == 200


def test_reload_of_a_ready_model_keeps_serving(server, digits, mnist_model):
    assert server.post("/v2/repository/models/mnist-svm/load").status_code == 200
    assert server.index()["mnist-svm"]["state"] == "READY"
    got = output(server.infer("mnist-svm", v2_body(digits[:5])))
    assert got.ravel().tolist() == mnist_model.predict(digits[:5]).tolist()


@pytest.mark.parametrize("path, status", [
    ("/v2/repository/models/nope/load", 404),
    ("/v2/repository/models/nope/unload", 404),
])
def test_unknown_models_in_control_calls(server, path, status):
    r = server.post(path)
    assert r.status_code == status
    assert "nope" in r.json()["error"]


def test_unsupported_load_parameters(server):
    r = server.post(f"/v2/repository/models/{XGB}/load", json={"parameters": {"config": "{}"}})
    assert r.status_code == 400
    assert "'config'" in r.json()["error"]
    assert server.index()[XGB]["state"] == "READY"


def test_unload_dependents_must_be_bool(server):
    r = server.post(f"/v2/repository/models/{XGB}/unload",
                    json={"parameters": {"unload_dependents": "no"}})
    assert r.status_code == 400
    assert server.index()[XGB]["state"] == "READY"


def test_no_loading_at_startup(make_server, digits, mnist_model):
    with make_server(workers=2, env={"DEPOT_LOAD_AT_STARTUP": "false"}) as server:
        entries = server.index()
        assert {e["state"] for e in entries.values()} == {"UNAVAILABLE"}
        assert entries["mnist-svm"]["reason"] == "new on disk: call load"
        assert server.index(ready=True) == {}
        assert server.post("/v2/repository/models/mnist-svm/load").status_code == 200
        for _ in range(10):
            got = output(server.infer("mnist-svm", v2_body(digits[:3])))
            assert got.ravel().tolist() == mnist_model.predict(digits[:3]).tolist()
