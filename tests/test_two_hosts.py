"""Two Depot deployments (two gunicorn masters, 2 workers each, their own
state folders) on one PostgreSQL database: one truth for both. A control
call on one holds on the other when it returns; a host that joins or
restarts adopts the state; both serve the bytes the load published; one
watcher acts for a shared models folder; the database can go away and
come back."""
from __future__ import annotations

import contextlib
import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import joblib
import pytest
import requests
from sklearn.dummy import DummyClassifier

from app.registry import NOT_SERVED_HERE

from conftest import MODELS, Server, output, run_server, spread, v2_body, wait_until

pytestmark = [pytest.mark.server, pytest.mark.slow]

MNIST = "mnist-svm"
XGB = "mushroom-xgboost"


def host(tmp_path: Path, name: str, url: str, env: dict[str, str] | None = None, **kw):
    """A 2-worker host on the database at ``url``, in a folder of its own
    (its models a copy of the bundled ones unless ``models`` says else)."""
    (tmp_path / name).mkdir(exist_ok=True)
    full = {"DEPOT_STATE_URL": url, "DEPOT_WATCH": "false", **(env or {})}
    return run_server(tmp_path / name, workers=2, env=full, **kw)


def hosts(tmp_path: Path, url: str, *names: str, **env: str):
    return [host(tmp_path, name, url, env) for name in names]


def sevens(digits) -> DummyClassifier:
    return DummyClassifier(strategy="constant", constant=7).fit(digits[:10], [7] * 10)


def test_an_unload_on_one_host_holds_on_the_other_when_it_returns(tmp_path, postgres_url,
                                                                  digits):
    first, second = hosts(tmp_path, postgres_url, "a", "b")
    with first as a, second as b:
        body = v2_body(digits[:1])
        replies = spread(lambda: b.infer(MNIST, body), 16)
        assert {r.status_code for r in replies} == {200}, [r.text for r in replies]
        for _ in range(3):
            assert a.post(f"/v2/repository/models/{MNIST}/unload").status_code == 200
            replies = spread(lambda: b.infer(MNIST, body), 16)
            assert {r.status_code for r in replies} == {400}, [r.text for r in replies]
            assert b.index()[MNIST]["state"] == "UNAVAILABLE"
            assert b.post(f"/v2/repository/models/{MNIST}/load").status_code == 200
            replies = spread(lambda: a.infer(MNIST, body), 16)
            assert {r.status_code for r in replies} == {200}, [r.text for r in replies]
            assert a.index()[MNIST]["state"] == "READY"


def test_the_walkthrough_on_one_host_is_true_on_the_other(tmp_path, postgres_url, digits,
                                                          mnist_model, mushrooms,
                                                          mushroom_model):
    first, second = hosts(tmp_path, postgres_url, "a", "b")
    with first as a, second as b:
        for driver, checker in ((a, b), (b, a)):
            assert driver.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
            fresh = requests.Session()  # a new connection, so a new worker may answer
            index = {e["name"]: e for e in fresh.post(checker.url + "/v2/repository/index",
                                                      json={}, timeout=30).json()}
            assert index[XGB] == {"name": XGB, "version": "v0.1.0", "state": "UNAVAILABLE",
                                  "reason": "unloaded"}
            assert [e["name"] for e in checker.index(ready=True).values()] == [MNIST]
            r = checker.infer(XGB, v2_body(mushrooms[:1]))
            assert r.status_code == 400 and "unloaded" in r.json()["error"], r.text
            assert checker.get(f"/v2/models/{XGB}/ready").status_code == 400
            assert driver.post(f"/v2/repository/models/{XGB}/load").status_code == 200
            assert checker.get(f"/v2/models/{XGB}/ready").status_code == 200
            got = output(checker.infer(XGB, v2_body(mushrooms[:8])))
            assert got.ravel().tolist() == mushroom_model.predict(mushrooms[:8]).tolist()
            got = output(checker.infer(MNIST, v2_body(digits[:8])))
            assert got.ravel().tolist() == mnist_model.predict(digits[:8]).tolist()


def test_hosts_that_start_together_initialise_the_deployment_once(tmp_path, postgres_url):
    with contextlib.ExitStack() as stack:
        both = [stack.enter_context(host(tmp_path, name, postgres_url, wait=False))
                for name in ("a", "b")]
        for server in both:
            wait_until(lambda: _ready(server), timeout=60)
        counts = [Counter(event for event, _ in s.events()) for s in both]
        assert sorted(c["load"] for c in counts) == [0, 2], counts
        assert sorted(c["restore"] for c in counts) == [0, 2], counts
        assert sum(c["register"] for c in counts) == 2, counts
        for server in both:
            assert {e["state"] for e in server.index().values()} == {"READY"}


def _ready(server: Server) -> bool:
    try:
        return server.get("/v2/health/ready").status_code == 200
    except requests.ConnectionError:
        assert server.proc.poll() is None, server.log_tail()
        return False


def test_a_host_that_joins_or_restarts_adopts_the_state(tmp_path, postgres_url, digits,
                                                        mnist_model, mushrooms):
    with host(tmp_path, "a", postgres_url) as a:
        assert a.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        for _ in range(5):
            assert a.infer(MNIST, v2_body(digits[:1])).status_code == 200
        wait_until(lambda: a.get(f"/v2/models/{MNIST}/stats").json()["model_stats"][0][
            "execution_count"] == 5)
        stats = a.get(f"/v2/models/{MNIST}/stats").json()
        for models in (MODELS, None):  # a new host, then the same host restarted
            with host(tmp_path, "b", postgres_url, models=models) as b:
                assert b.index()[XGB]["reason"] == "unloaded"
                assert b.infer(XGB, v2_body(mushrooms[:1])).status_code == 400
                got = output(b.infer(MNIST, v2_body(digits[:4])))
                assert got.ravel().tolist() == mnist_model.predict(digits[:4]).tolist()
                seen = b.events()
                assert ("restore", MNIST) in seen and ("load", MNIST) not in seen, seen
            assert a.get(f"/v2/models/{MNIST}/stats").json() == stats
            assert a.index()[XGB]["state"] == "UNAVAILABLE"
            assert a.index()[MNIST]["state"] == "READY"


def test_every_host_serves_the_bytes_the_load_published_or_refuses(tmp_path, postgres_url,
                                                                   digits, mnist_model):
    """Host B's models folder holds other weights for mnist-svm: B refuses
    the copy A loaded, and A refuses the copy B loads."""
    other = tmp_path / "other-models"
    shutil.copytree(MODELS, other, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    joblib.dump(sevens(digits), other / MNIST / "model.joblib")
    with host(tmp_path, "a", postgres_url) as a, \
            host(tmp_path, "b", postgres_url, models=other) as b:
        truth = mnist_model.predict(digits[:4]).tolist()
        assert output(a.infer(MNIST, v2_body(digits[:4]))).ravel().tolist() == truth
        entry = wait_until(lambda: (e := b.index()[MNIST])["state"] == "UNAVAILABLE" and e)
        assert entry["reason"].startswith(NOT_SERVED_HERE), entry
        assert "other bytes than the load published" in entry["reason"]
        replies = spread(lambda: b.infer(MNIST, v2_body(digits[:1])), 8)
        assert {r.status_code for r in replies} == {400}, [r.text for r in replies]
        assert all("other bytes" in r.json()["error"] for r in replies)
        assert a.index()[MNIST]["state"] == "READY"  # A's copy is the published one

        assert b.post(f"/v2/repository/models/{MNIST}/load").status_code == 200
        replies = spread(lambda: b.infer(MNIST, v2_body(digits[:2])), 8)
        assert {tuple(output(r).ravel().tolist()) for r in replies} == {(7, 7)}
        replies = spread(lambda: a.infer(MNIST, v2_body(digits[:2])), 8)
        assert {r.status_code for r in replies} == {400}, [r.text for r in replies]
        assert a.index()[MNIST]["state"] == "UNAVAILABLE"


def test_churn_on_both_hosts_with_traffic_on_both(tmp_path, postgres_url, digits,
                                                  mnist_model):
    first, second = hosts(tmp_path, postgres_url, "a", "b")
    truth = mnist_model.predict(digits[:3]).tolist()
    with first as a, second as b:
        stop = threading.Event()
        seen: Counter = Counter()
        wrong: list[str] = []

        def traffic(server: Server) -> None:
            with requests.Session() as session:
                for _ in range(10_000):
                    if stop.is_set():
                        return
                    r = session.post(f"{server.url}/v2/models/{MNIST}/infer",
                                     json=v2_body(digits[:3]), timeout=30)
                    seen[r.status_code] += 1
                    if r.status_code == 200:
                        if output(r).ravel().tolist() != truth:
                            wrong.append(r.text)
                    elif r.status_code != 400 or "error" not in r.json():
                        wrong.append(f"{r.status_code} {r.text}")

        def churn(server: Server) -> None:
            for _ in range(6):
                for action in ("unload", "load"):
                    r = server.post(f"/v2/repository/models/{MNIST}/{action}")
                    seen[f"{action} {r.status_code}"] += 1

        threads = [threading.Thread(target=traffic, args=(s,)) for s in (a, b, a, b)]
        controllers = [threading.Thread(target=churn, args=(s,)) for s in (a, b)]
        for t in threads + controllers:
            t.start()
        for t in controllers:
            t.join(timeout=120)
        stop.set()
        for t in threads:
            t.join(timeout=30)
        assert not wrong, wrong[:5]
        assert seen["load 200"] + seen["unload 200"] == 24, seen
        assert seen[200] > 0 and seen[400] > 0, seen
        assert {code for code in seen if isinstance(code, int)} <= {200, 400}, seen
        # both end where the last call left the model: loaded
        for server in (a, b):
            assert server.index()[MNIST]["state"] == "READY"
            assert output(server.infer(MNIST, v2_body(digits[:3]))).ravel().tolist() == truth


@contextlib.contextmanager
def shared_folder_hosts(tmp_path: Path, url: str) -> Iterator[tuple[Server, Server, Path]]:
    shared = tmp_path / "shared-models"
    shutil.copytree(MODELS, shared, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    env = {"DEPOT_MODELS": str(shared), "DEPOT_WATCH": "true", "DEPOT_RESCAN_INTERVAL": "1"}
    with host(tmp_path, "a", url, env, models=None) as a, \
            host(tmp_path, "b", url, env, models=None) as b:
        yield a, b, shared


def _drop_model(shared: Path, name: str) -> None:
    """A copy of mnist-svm under another name, renamed into place whole."""
    staging = shared.parent / f"staging-{name}"
    shutil.copytree(MODELS / MNIST, staging, ignore=shutil.ignore_patterns("*.py"))
    settings = staging / "model-settings.json"
    settings.write_text(settings.read_text().replace(f'"{MNIST}"', f'"{name}"'))
    staging.rename(shared / name)


def test_one_watcher_acts_for_a_shared_models_folder(tmp_path, postgres_url):
    with shared_folder_hosts(tmp_path, postgres_url) as (a, b, shared):
        watcher = wait_until(lambda: a.get("/v2").json()["depot"]["watcher_pid"], timeout=10)
        assert b.get("/v2").json()["depot"]["watcher_pid"] == watcher
        holder, other = (a, b) if watcher in a.worker_pids() else (b, a)
        assert watcher in holder.worker_pids()
        _drop_model(shared, "digits-copy")
        for server in (a, b):
            wait_until(lambda: "digits-copy" in server.index(), timeout=15)
        time.sleep(2.5)  # two rescans of every host that might (wrongly) watch too
        registered = [e for s in (a, b) for e in s.events() if e == ("register", "digits-copy")]
        assert len(registered) == 1, registered
        assert ("register", "digits-copy") in holder.events()

        # the watcher's host goes away: the other host takes over
        holder.proc.terminate()
        holder.proc.wait(timeout=30)
        wait_until(lambda: other.get("/v2").json()["depot"]["watcher_pid"] in other.worker_pids(),
                   timeout=15)
        _drop_model(shared, "digits-again")
        wait_until(lambda: "digits-again" in other.index(), timeout=15)
        assert ("register", "digits-again") in other.events()


def test_the_database_stopped_and_started_mid_run(tmp_path, postgres, postgres_url, digits,
                                                  mnist_model):
    lease = 3.0
    first, second = hosts(tmp_path, postgres_url, "a", "b", DEPOT_LEASE_SECONDS=str(lease))
    truth = mnist_model.predict(digits[:2]).tolist()
    with first as a, second as b:
        assert a.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        workers = tuple(wait_until(lambda: len(pids := s.worker_pids()) == 2 and pids)
                        for s in (a, b))
        stop = threading.Event()
        seen: Counter = Counter()
        wrong: list[str] = []

        def traffic(server: Server) -> None:
            with requests.Session() as session:
                for _ in range(100_000):
                    if stop.is_set():
                        return
                    try:
                        r = session.post(f"{server.url}/v2/models/{MNIST}/infer",
                                         json=v2_body(digits[:2]), timeout=30)
                    except requests.ConnectionError as e:
                        wrong.append(f"connection: {e}")
                        continue
                    seen[r.status_code] += 1
                    if r.status_code == 200 and output(r).ravel().tolist() != truth:
                        wrong.append(r.text)
                    elif r.status_code not in (200, 503) or "error" in r.text and \
                            "error" not in r.json():
                        wrong.append(f"{r.status_code} {r.text}")
                    time.sleep(0.01)

        threads = [threading.Thread(target=traffic, args=(s,)) for s in (a, b)]
        for t in threads:
            t.start()
        try:
            with postgres.down():
                for server in (a, b):
                    r = server.post(f"/v2/repository/models/{XGB}/load")
                    assert r.status_code == 503 and "unreachable" in r.json()["error"], r.text
                    r = server.post("/v2/repository/index", json={})
                    assert r.status_code == 503 and "error" in r.json(), r.text
                for server in (a, b):  # past its lease, a host stops serving
                    (r,) = wait_until(lambda: (r := server.infer(MNIST, v2_body(digits[:2])))
                                      .status_code == 503 and [r], timeout=lease + 10)
                    assert "DEPOT_LEASE_SECONDS" in r.json()["error"], r.text
                    ready = server.get("/v2/health/ready")
                    assert ready.status_code == 503 and ready.json()["ready"] is False
            for server in (a, b):  # back by itself, state intact
                wait_until(lambda: server.infer(MNIST, v2_body(digits[:2])).status_code == 200,
                           timeout=30)
                wait_until(lambda: server.get("/v2/health/ready").status_code == 200, timeout=30)
                assert server.index()[XGB]["reason"] == "unloaded"
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not wrong, wrong[:5]
        assert seen[200] > 0 and seen[503] > 0, seen
        assert b.post(f"/v2/repository/models/{XGB}/load").status_code == 200
        assert a.get(f"/v2/models/{XGB}/ready").status_code == 200
        assert (a.worker_pids(), b.worker_pids()) == workers  # no worker died
