"""The models-folder watcher against a real 4-worker deployment and real files."""
from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import requests
import xgboost as xgb

from conftest import MODELS, output, run_server, spread, v2_body, wait_until

pytestmark = pytest.mark.server

SVM = MODELS / "mnist-svm" / "model.joblib"
XGB = MODELS / "mushroom-xgboost" / "model.json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("watch"),
                    env={"DEPOT_RESCAN_INTERVAL": "1"}) as s:
        yield s


def entry(server, name):
    return server.index().get(name)


def registered(server, name, timeout=2.0):
    return wait_until(lambda: entry(server, name), timeout=timeout)


def fresh_infer(server, name, body):
    return requests.post(f"{server.url}/v2/models/{name}/infer", json=body, timeout=30,
                         headers={"Connection": "close"})


def serves_everywhere(server, name, x, expected, times=24):
    for reply in spread(lambda: fresh_infer(server, name, v2_body(x)), times):
        assert output(reply).ravel().tolist() == expected


def inotify_pids(server) -> set[int]:
    """Processes of the deployment that hold an inotify instance."""
    pids = {server.proc.pid} | server.worker_pids()
    found = set()
    for pid in pids:
        try:
            links = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if any("inotify" in link for link in links):
            found.add(pid)
    return found


def test_a_dropped_settings_folder_registers_then_loads(server, digits, mnist_model):
    folder = server.models / "digits-copy"
    staging = server.models.parent / "staging"
    staging.mkdir()
    shutil.copy(SVM, staging / "model.joblib")
    (staging / "model-settings.json").write_text(
        '{"name": "digits", "implementation": "mlserver_sklearn.SKLearnModel",'
        ' "parameters": {"uri": "./model.joblib", "version": "7"}}')
    staging.rename(folder)
    assert registered(server, "digits") == {"name": "digits", "version": "7",
                                            "state": "UNAVAILABLE",
                                            "reason": "new on disk: call load"}
    assert fresh_infer(server, "digits", v2_body(digits[:1])).status_code == 400
    assert server.post("/v2/repository/models/digits/load").status_code == 200
    serves_everywhere(server, "digits", digits[:3], mnist_model.predict(digits[:3]).tolist())


def test_a_folder_with_just_an_artifact(server, mushrooms, mushroom_model):
    folder = server.models / "plain-xgb"
    folder.mkdir()
    shutil.copy(XGB, folder / "model.json")
    assert registered(server, "plain-xgb")["state"] == "UNAVAILABLE"
    assert server.post("/v2/repository/models/plain-xgb/load").status_code == 200
    serves_everywhere(server, "plain-xgb", mushrooms, mushroom_model.predict(mushrooms).tolist())


def test_ignored_names_never_register(server):
    for name in (".hidden.joblib", "a.joblib.swp", "b.tmp", "c.part", "4913", "d.joblib~"):
        shutil.copy(SVM, server.models / name)
    (server.models / "junk").mkdir()
    (server.models / "junk" / ".model.joblib.swp").write_bytes(b"x")
    shutil.copy(SVM, server.models / "iris.joblib")  # dropped last
    registered(server, "iris")
    names = set(server.index())
    assert not names & {".hidden", "a.joblib", "b", "c", "4913", "d", "junk", ".hidden.joblib"}


def test_removed_model_leaves_the_index_and_is_404_everywhere(server, digits):
    shutil.copy(SVM, server.models / "doomed.joblib")
    registered(server, "doomed")
    assert server.post("/v2/repository/models/doomed/load").status_code == 200
    assert fresh_infer(server, "doomed", v2_body(digits[:1])).status_code == 200
    (server.models / "doomed.joblib").unlink()
    wait_until(lambda: entry(server, "doomed") is None, timeout=2)
    codes = Counter(r.status_code for r in
                    spread(lambda: fresh_infer(server, "doomed", v2_body(digits[:1])), 40))
    assert codes == {404: 40}


def _other_model(path: Path) -> np.ndarray:
    """A differently trained mushroom model, so a swap shows in the answers."""
    rng = np.random.default_rng(3)
    x = (rng.random((400, 126)) < 0.3).astype(np.float32)
    y = (x[:, 5] + x[:, 17] > 0).astype(int)
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(x, y)
    model.save_model(path)
    return model


def test_changed_artifact_keeps_serving_until_load(server, mushrooms, mushroom_model,
                                                   tmp_path):
    folder = server.models / "swap"
    folder.mkdir()
    shutil.copy(XGB, folder / "model.json")
    registered(server, "swap")
    assert server.post("/v2/repository/models/swap/load").status_code == 200
    old = mushroom_model.predict_proba(mushrooms)[:, 1]
    new_model = _other_model(tmp_path / "new.json")
    new = new_model.predict_proba(mushrooms)[:, 1]
    assert not np.allclose(old, new)

    shutil.copy(tmp_path / "new.json", folder / "model.json")
    wait_until(lambda: entry(server, "swap")["reason"] == "changed on disk: call load to apply",
               timeout=2)
    assert entry(server, "swap")["state"] == "READY"
    body = v2_body(mushrooms, outputs=[{"name": "predict_proba"}])
    np.testing.assert_allclose(output(fresh_infer(server, "swap", body), "predict_proba")[:, 1],
                               old, rtol=1e-6)

    stop, replies = threading.Event(), Counter()

    def hammer():
        while not stop.is_set():
            r = fresh_infer(server, "swap", body)
            got = output(r, "predict_proba")[:, 1]
            replies["old" if np.allclose(got, old, rtol=1e-6) else
                    "new" if np.allclose(got, new, rtol=1e-6) else "wrong"] += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)  # let requests be in flight when the load comes
        assert server.post("/v2/repository/models/swap/load").status_code == 200
        after = [output(r, "predict_proba")[:, 1]
                 for r in spread(lambda: fresh_infer(server, "swap", body), 24)]
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert all(np.allclose(a, new, rtol=1e-6) for a in after)
    assert replies["wrong"] == 0 and replies["old"] > 0
    assert entry(server, "swap") == {"name": "swap", "state": "READY", "reason": ""}


def test_slow_copy_is_never_ready_and_wrong(server, digits, mnist_model):
    data = SVM.read_bytes()
    target = server.models / "slow.joblib"
    seen, problems = Counter(), []
    expected = mnist_model.predict(digits[:2]).tolist()
    with open(target, "wb") as handle:
        for start in range(0, len(data), 16384):
            handle.write(data[start:start + 16384])
            handle.flush()
            state = (entry(server, "slow") or {}).get("state")
            seen[state] += 1
            r = fresh_infer(server, "slow", v2_body(digits[:2]))
            if r.status_code >= 500:
                problems.append(r.text)
            elif r.status_code == 200 and output(r).ravel().tolist() != expected:
                problems.append(f"wrong: {r.text}")
            if start == 65536:  # an impatient load of the half-written file
                r = server.post("/v2/repository/models/slow/load")
                assert r.status_code in (400, 404), r.text
            time.sleep(0.05)
    assert not problems
    assert "READY" not in seen
    # the impatient load failed; once the copy is quiet the reason moves on
    wait_until(lambda: entry(server, "slow")["reason"] == "changed on disk: call load to apply",
               timeout=3)
    assert entry(server, "slow")["state"] == "UNAVAILABLE"
    assert server.post("/v2/repository/models/slow/load").status_code == 200
    serves_everywhere(server, "slow", digits[:2], expected)


def test_unreadable_settings_are_reported(server):
    folder = server.models / "broken-settings"
    folder.mkdir()
    shutil.copy(SVM, folder / "model.joblib")
    (folder / "model-settings.json").write_text('{"name": "broken", ')
    got = registered(server, "broken-settings")
    assert got["state"] == "UNAVAILABLE"
    assert "bad model-settings.json" in got["reason"]
    r = server.post("/v2/repository/models/broken-settings/load")
    assert r.status_code == 400 and "model-settings.json" in r.json()["error"]


def test_rescan_repairs_what_events_missed(server):
    shutil.copy(SVM, server.models / "missed.joblib")
    registered(server, "missed")
    with sqlite3.connect(server.state / "registry.sqlite3") as db:  # lose it behind its back
        db.execute("DELETE FROM models WHERE name = 'missed'")
    registered(server, "missed", timeout=3)  # rescan interval is 1 s here


def test_exactly_one_observer_and_takeover(make_server, digits):
    with make_server() as server:
        meta = wait_until(lambda: server.get("/v2").json()["depot"]["watcher_pid"], timeout=5)
        assert wait_until(lambda: inotify_pids(server), timeout=5) == {meta}
        assert meta in server.worker_pids()

        os.kill(meta, signal.SIGKILL)
        wait_until(lambda: len(server.worker_pids()) == 4 and meta not in server.worker_pids(),
                   timeout=20)
        new = wait_until(lambda: (p := server.get("/v2").json()["depot"]["watcher_pid"]) != meta
                         and p, timeout=10)
        assert wait_until(lambda: inotify_pids(server), timeout=5) == {new}
        shutil.copy(SVM, server.models / "after-takeover.joblib")
        registered(server, "after-takeover")
        assert inotify_pids(server) == {new}


def test_no_watcher_when_switched_off(make_server):
    with make_server(workers=2, env={"DEPOT_WATCH": "false"}) as server:
        assert server.get("/v2").json()["depot"]["watcher_pid"] is None
        assert inotify_pids(server) == set()
        shutil.copy(SVM, server.models / "manual.joblib")
        assert server.post("/v2/repository/models/manual/load").status_code == 200
        assert server.index()["manual"]["state"] == "READY"


def test_state_folder_inside_the_models_folder_is_not_a_model(make_server, tmp_path):
    with make_server(workers=2, env={"DEPOT_STATE_DIR": str(tmp_path / "models" / "state")}) \
            as server:
        shutil.copy(SVM, server.models / "marker.joblib")
        registered(server, "marker")
        assert "state" not in server.index()
