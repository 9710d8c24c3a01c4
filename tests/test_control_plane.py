"""Control-plane safety: the API key, concurrent load/unload churn, and
crash survival of workers and of the watcher's process."""
from __future__ import annotations

import os
import pickle
import random
import signal
import threading
from collections import Counter

import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import output, slow_artifact, v2_body, wait_until

pytestmark = pytest.mark.server

XGB = "mushroom-xgboost"
KEY = "s3cret-key"


def fresh(server, model, body):
    return requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30,
                         headers={"Connection": "close"})


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from conftest import run_server

    with run_server(tmp_path_factory.mktemp("secured"), env={"DEPOT_API_KEY": KEY}) as s:
        yield s


@pytest.mark.parametrize("path", ["/v2/repository/index",
                                  f"/v2/repository/models/{XGB}/load",
                                  f"/v2/repository/models/{XGB}/unload"])
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"bearer {KEY}", KEY,
                                    f"Bearer {KEY}x", "Basic czNjcmV0"])
def test_repository_calls_need_the_key(secured, path, header):
    headers = {"Authorization": header} if header else {}
    r = secured.post(path, headers=headers)
    assert r.status_code == 401
    assert "Authorization: Bearer" in r.json()["error"]
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = secured.post("/v2/repository/index", headers={"Authorization": f"Bearer {KEY}"})
    assert {e["name"]: e["state"] for e in r.json()}[XGB] == "READY"


def test_the_data_plane_stays_open(secured, mushrooms, mushroom_model):
    r = secured.infer(XGB, v2_body(mushrooms))
    assert output(r).ravel().tolist() == mushroom_model.predict(mushrooms).tolist()
    assert secured.get(f"/v2/models/{XGB}").status_code == 200
    assert secured.get("/v2/health/ready").status_code == 200


def test_tritonclient_passes_the_key(secured):
    client = httpclient.InferenceServerClient(secured.url.removeprefix("http://"))
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="Bearer"):
            client.unload_model(XGB)
        client.unload_model(XGB, headers=auth)
        assert not client.is_model_ready(XGB)
        client.load_model(XGB, headers=auth)
        assert client.is_model_ready(XGB)
        names = {e["name"] for e in client.get_model_repository_index(headers=auth)}
        assert XGB in names
    finally:
        client.close()


def test_load_unload_churn(server, mushrooms, mushroom_model):
    """4 threads infer while 2 alternate unload/load and 4 more fire random
    control calls: every reply is a right answer or a clean 'not ready'."""
    body = v2_body(mushrooms[:4])
    expected = mushroom_model.predict(mushrooms[:4]).tolist()
    stop = threading.Event()
    replies: Counter = Counter()
    control: Counter = Counter()
    problems: list[str] = []

    def infer_loop():
        while not stop.is_set():
            r = fresh(server, XGB, body)
            replies[r.status_code] += 1
            if r.status_code == 200 and output(r).ravel().tolist() != expected:
                problems.append(f"wrong answer {r.text[:200]}")
            elif r.status_code not in (200, 400):
                problems.append(f"{r.status_code} {r.text[:200]}")
            elif r.status_code == 400 and "not ready" not in r.json()["error"]:
                problems.append(r.text[:200])

    def cycle_loop(cycles):
        for _ in range(cycles):
            for op in ("unload", "load"):
                r = server.post(f"/v2/repository/models/{XGB}/{op}")
                control[(op, r.status_code)] += 1

    def random_loop(calls, seed):
        rng = random.Random(seed)
        for _ in range(calls):
            op = rng.choice(["load", "unload"])
            r = server.post(f"/v2/repository/models/{XGB}/{op}")
            control[(op, r.status_code)] += 1

    inferers = [threading.Thread(target=infer_loop) for _ in range(4)]
    controllers = [threading.Thread(target=cycle_loop, args=(8,)) for _ in range(2)]
    controllers += [threading.Thread(target=random_loop, args=(8, s)) for s in range(4)]
    for t in inferers + controllers:
        t.start()
    for t in controllers:
        t.join(timeout=120)
    stop.set()
    for t in inferers:
        t.join(timeout=30)
    print(f"churn: replies {dict(replies)}, control calls {dict(control)}")
    assert not problems, problems[:5]
    assert {code for _, code in control} == {200}
    assert replies[200] > 0

    # every worker agrees with the index once the churn is over
    state = server.index()[XGB]
    assert state["state"] in ("READY", "UNAVAILABLE")
    want = 200 if state["state"] == "READY" else 400
    assert Counter(fresh(server, XGB, body).status_code for _ in range(40)) == {want: 40}
    assert server.post(f"/v2/repository/models/{XGB}/load").status_code == 200


def test_sigkill_of_every_worker_loses_nothing(make_server, mushrooms, digits, mnist_model):
    with make_server() as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        before = server.index()
        watcher = wait_until(lambda: server.get("/v2").json()["depot"]["watcher_pid"], 5)
        for pid in server.worker_pids():  # the watcher's worker among them
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: watcher not in server.worker_pids()
                   and len(server.worker_pids()) == 4, timeout=30)
        wait_until(lambda: server.get("/v2").json()["depot"]["watcher_pid"] not in
                   (None, watcher), timeout=10)
        assert server.index() == before
        for _ in range(20):
            assert fresh(server, XGB, v2_body(mushrooms[:1])).status_code == 400
            got = output(fresh(server, "mnist-svm", v2_body(digits[:2])))
            assert got.ravel().tolist() == mnist_model.predict(digits[:2]).tolist()


def test_a_load_interrupted_by_a_crash_is_repaired(make_server):
    with make_server(workers=2, env={"DEPOT_RESCAN_INTERVAL": "0.5"}) as server:
        (server.models / "slow.joblib").write_bytes(slow_artifact(8))
        wait_until(lambda: "slow" in server.index(), timeout=5)
        def load_slowly():
            try:
                requests.post(f"{server.url}/v2/repository/models/slow/load", timeout=30)
            except requests.ConnectionError:
                pass  # its worker is killed below: that is the point

        caller = threading.Thread(target=load_slowly)
        caller.start()
        wait_until(lambda: server.index()["slow"]["state"] == "LOADING", timeout=5)
        for pid in server.worker_pids():
            os.kill(pid, signal.SIGKILL)
        caller.join(timeout=30)
        entry = wait_until(lambda: (e := server.index()["slow"])["state"] != "LOADING" and e,
                           timeout=15)
        assert entry["state"] == "UNAVAILABLE"
        assert entry["reason"].startswith("load interrupted")
        assert server.index(ready=True).keys() == {"mnist-svm", XGB}


def test_a_model_that_raises_at_load_harms_no_one(make_server, digits, mnist_model):
    with make_server(workers=2) as server:
        (server.models / "exits.joblib").write_bytes(
            pickle.dumps(type("E", (), {"__reduce__": lambda self: (exit, (3,))})()))
        wait_until(lambda: "exits" in server.index(), timeout=5)
        r = server.post("/v2/repository/models/exits/load")
        assert r.status_code == 400 and "SystemExit" in r.json()["error"]
        assert server.index()["exits"]["state"] == "UNAVAILABLE"
        got = output(server.infer("mnist-svm", v2_body(digits[:2])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:2]).tolist()
