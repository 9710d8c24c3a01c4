"""Several gunicorn workers, one truth: what a load or unload call says holds
for every worker as soon as the call returns, on either store (the state
folder's SQLite, or PostgreSQL)."""
from __future__ import annotations

import os
import signal
import threading
from collections import Counter

import pytest
import requests

from conftest import output, run_server, spread, v2_body, wait_until

pytestmark = pytest.mark.server

XGB = "mushroom-xgboost"
STORES = ["sqlite", "postgresql"]


def store_env(request: pytest.FixtureRequest, store: str) -> dict[str, str]:
    if store == "sqlite":
        return {}
    return {"DEPOT_STATE_URL": request.getfixturevalue("postgres").new_database()}


@pytest.fixture(scope="module", params=STORES)
def deployment(request, tmp_path_factory):
    """A 4-worker server on each store in turn (the shared one for SQLite)."""
    if request.param == "sqlite":
        yield request.getfixturevalue("server")
        return
    with run_server(tmp_path_factory.mktemp(request.param),
                    env=store_env(request, request.param)) as server:
        yield server


def _fresh(server, body):
    """A new connection per request, so requests spread over the workers."""
    with requests.Session() as s:
        return s.post(f"{server.url}/v2/models/{XGB}/infer", json=body, timeout=30,
                      headers={"Connection": "close"})


def test_unload_then_load_holds_on_every_worker(deployment, mushrooms, mushroom_model):
    server = deployment
    body = v2_body(mushrooms[:4])
    expected = mushroom_model.predict(mushrooms[:4]).tolist()
    assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
    try:
        codes = Counter(r.status_code for r in spread(lambda: _fresh(server, body), 200))
        assert codes == {400: 200}
    finally:
        assert server.post(f"/v2/repository/models/{XGB}/load").status_code == 200
    replies = spread(lambda: _fresh(server, body), 200)
    assert Counter(r.status_code for r in replies) == {200: 200}
    assert all(output(r).ravel().tolist() == expected for r in replies)


def test_churn_never_gives_a_5xx_or_a_wrong_answer(deployment, mushrooms, mushroom_model):
    server = deployment
    body = v2_body(mushrooms[:4])
    expected = mushroom_model.predict(mushrooms[:4]).tolist()
    stop = threading.Event()
    seen: Counter = Counter()
    problems: list[str] = []

    def client() -> None:
        for _ in range(100_000):
            if stop.is_set():
                return
            r = _fresh(server, body)
            seen[r.status_code] += 1
            if r.status_code == 200:
                if output(r).ravel().tolist() != expected:
                    problems.append(f"wrong prediction: {r.text[:200]}")
            elif r.status_code != 400 or "not ready" not in r.json().get("error", ""):
                problems.append(f"{r.status_code}: {r.text[:200]}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
            assert server.post(f"/v2/repository/models/{XGB}/load").status_code == 200
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert not problems, problems[:5]
    assert seen[200] > 0 and set(seen) <= {200, 400}
    assert server.index()[XGB]["state"] == "READY"


@pytest.mark.parametrize("store", STORES)
def test_a_restarted_worker_rebuilds_from_the_shared_state(request, store, make_server, mushrooms,
                                                           digits, mnist_model):
    with make_server(workers=2, env=store_env(request, store)) as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        before = server.worker_pids()
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: len(server.worker_pids() - before) == 2, timeout=30)
        wait_until(lambda: server.get("/v2/health/ready").status_code == 200, timeout=30)
        for _ in range(20):
            r = _fresh(server, v2_body(mushrooms[:1]))
            assert r.status_code == 400 and "unloaded" in r.json()["error"]
            got = output(server.infer("mnist-svm", v2_body(digits[:2])))
            assert got.ravel().tolist() == mnist_model.predict(digits[:2]).tolist()
        assert server.index()[XGB]["state"] == "UNAVAILABLE"
