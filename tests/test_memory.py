"""One copy of every model in memory, however many workers: a model loaded
through the repository API, or reloaded, costs what a preloaded one costs
(the master loads it and fresh forks replace the workers, app/registry/master.py),
and replacing the workers that way loses no request. Real gunicorn, 4
workers, PSS of the whole process tree from /proc/<pid>/smaps_rollup."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import joblib
import numpy as np
import orjson
import pytest
import requests
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

from app.registry import SHARED_FROM
from conftest import MODELS, Server, output, run_server, spread, v2_body, wait_until

pytestmark = [pytest.mark.server, pytest.mark.slow]

FOREST = "forest"
DIGITS = "digits-forest"
#: the bound of the issue: PSS after a hot load or reloads, over PSS preloaded
SETTLED_RATIO = 1.3


@pytest.fixture(scope="module")
def forest_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forest made here: about 70 MB on disk, 180 MB in memory."""
    rng = np.random.default_rng(0)
    x = rng.random((12000, 64)).astype(np.float32)
    forest = ExtraTreesClassifier(n_estimators=30, n_jobs=2, random_state=0)
    forest.fit(x, rng.integers(0, 10, len(x)))
    path = tmp_path_factory.mktemp("forest") / f"{FOREST}.joblib"
    joblib.dump(forest, path)
    return path


@pytest.fixture(scope="module")
def digits_forest(tmp_path_factory: pytest.TempPathFactory, digits):
    """A forest over the digits, about 2 MB on disk: large enough to be
    shared (app.registry.SHARED_FROM), small enough to load in a blink."""
    from sklearn.datasets import load_digits

    model = RandomForestClassifier(n_estimators=40, random_state=0)
    model.fit(digits, load_digits().target)
    folder = tmp_path_factory.mktemp("digits") / DIGITS
    folder.mkdir()
    joblib.dump(model, folder / "model.joblib")
    assert (folder / "model.joblib").stat().st_size >= SHARED_FROM
    return folder, model


def digits_server(tmp_path: Path, digits_forest) -> "contextlib.AbstractContextManager":
    """A 4-worker server with the bundled models and the digits forest."""
    shutil.copytree(MODELS, tmp_path / "models", ignore=shutil.ignore_patterns("*.py"))
    shutil.copytree(digits_forest[0], tmp_path / "models" / DIGITS)
    return run_server(tmp_path, workers=4, models=None)


def forest_server(tmp_path: Path, forest_file: Path | None, name: str):
    """A 4-worker server with mnist-svm preloaded (so scikit-learn is
    imported before fork) and, if given, the forest."""
    models = tmp_path / name / "models"
    shutil.copytree(MODELS / "mnist-svm", models / "mnist-svm", ignore=shutil.ignore_patterns("*.py"))
    if forest_file is not None:
        shutil.copy(forest_file, models / forest_file.name)
    return run_server(tmp_path / name, workers=4, models=None)


def steady_pss(server: Server, workers: int = 4) -> float:
    """PSS once every worker runs and two readings 0.3 s apart agree."""
    wait_until(lambda: len(server.worker_pids()) == workers, timeout=30)
    last = server.pss_mb()
    for _ in range(50):
        time.sleep(0.3)
        now = server.pss_mb()
        if abs(now - last) < 0.02 * now:
            return now
        last = now
    return last


def settles_under(server: Server, bound: float) -> float:
    """PSS once it is under ``bound`` (replaced workers take a moment to go)."""
    return wait_until(lambda: (p := server.pss_mb()) <= bound and p, timeout=60, every=0.2)


def serving(server: Server) -> set[int]:
    """The workers that serve: started (a ready flag), not stopping (no quiet
    flag), as the master sees them (app/registry/master.py)."""
    flags = server.state / "workers"
    ready = {int(p.stem) for p in flags.glob("*.ready")}
    return server.worker_pids() & (ready - {int(p.stem) for p in flags.glob("*.quiet")})


def copy_events(server: Server) -> list[int]:
    """The processes that built a copy of a model from its snapshot."""
    lines = [orjson.loads(line) for line in server.log.read_text().splitlines()
             if line.startswith("{")]
    return [line["pid"] for line in lines if line.get("event") == "copy"]


def peak_during(server: Server, call) -> tuple[float, requests.Response]:
    """The highest PSS seen while ``call`` runs, sampled every 20 ms."""
    peak, running = [0.0], threading.Event()

    def sample() -> None:
        for _ in range(3000):
            if not running.is_set():
                return
            now = server.pss_mb()
            peak[0] = max(peak[0], now)
            time.sleep(0.02)

    running.set()
    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        reply = call()
    finally:
        running.clear()
        sampler.join(timeout=30)
    return peak[0], reply


def test_a_hot_load_and_reloads_cost_what_a_preload_costs(tmp_path, forest_file, digits):
    with forest_server(tmp_path, forest_file, "preloaded") as server:
        preloaded = steady_pss(server)
        expected = output(server.infer(FOREST, v2_body(digits[:4])))
    with forest_server(tmp_path, None, "hot") as server:
        empty = steady_pss(server)
        model = preloaded - empty  # one copy of the forest
        assert model > 50, (preloaded, empty)
        shutil.copy(forest_file, server.models / forest_file.name)
        wait_until(lambda: FOREST in server.index(), timeout=20)
        load = lambda: server.post(f"/v2/repository/models/{FOREST}/load")  # noqa: E731

        peak, reply = peak_during(server, load)
        assert reply.status_code == 200, reply.text
        # Each worker loading its own copy would be a copy a worker (4 here).
        # One load peaks at about two copies by itself, in any process (the
        # unpickler holds every tree's arrays while scikit-learn copies
        # them): the worker's check and the master's load take turns, and
        # the roll adds a round of fresh forks.
        assert peak - empty < 2.5 * model, (peak, empty, model)
        settles_under(server, SETTLED_RATIO * preloaded)
        hot = steady_pss(server)
        for _ in range(3):
            assert load().status_code == 200
        settles_under(server, SETTLED_RATIO * preloaded)
        reloaded = steady_pss(server)
        got = spread(lambda: server.infer(FOREST, v2_body(digits[:4])), 16)
        assert all(output(r).tolist() == expected.tolist() for r in got)
        print(f"\nPSS MB: preloaded {preloaded:.0f}; after a hot load {hot:.0f} "
              f"({hot / preloaded:.2f}x), after 3 reloads {reloaded:.0f} "
              f"({reloaded / preloaded:.2f}x); one copy {model:.0f}, peak while loading "
              f"{peak - empty:.0f} above none ({(peak - empty) / model:.2f} copies)")
        # the master built every copy the workers serve; no worker built one
        assert set(copy_events(server)) == {server.proc.pid}

        assert server.post(f"/v2/repository/models/{FOREST}/unload").status_code == 200
        # An unload gives the memory back (what stays is the libraries the
        # first load imported), and load and unload cycles leak nothing.
        settles_under(server, reloaded - 0.4 * model)
        unloaded = steady_pss(server)
        assert load().status_code == 200
        assert server.post(f"/v2/repository/models/{FOREST}/unload").status_code == 200
        settles_under(server, unloaded + 0.3 * model)


def test_reloads_under_traffic_lose_no_request(tmp_path, digits_forest, digits):
    truth = digits_forest[1].predict(digits[:3]).tolist()
    with digits_server(tmp_path, digits_forest) as server:
        before = wait_until(lambda: len(pids := server.worker_pids()) == 4 and pids)
        stop = threading.Event()
        seen: Counter = Counter()
        wrong: list[str] = []

        def client(keep_alive: bool) -> None:
            session = requests.Session()
            headers = {} if keep_alive else {"Connection": "close"}
            for _ in range(100_000):
                if stop.is_set():
                    break
                try:
                    r = session.post(f"{server.url}/v2/models/{DIGITS}/infer", timeout=30,
                                     json=v2_body(digits[:3]), headers=headers)
                except requests.RequestException as e:
                    wrong.append(f"{'keep-alive' if keep_alive else 'fresh'}: {e!r}")
                    continue
                seen["keep-alive" if keep_alive else "fresh"] += 1
                if r.status_code != 200 or output(r).ravel().tolist() != truth:
                    wrong.append(f"{r.status_code} {r.text[:200]}")
            session.close()

        threads = [threading.Thread(target=client, args=(k,)) for k in (True, True, False, False)]
        for t in threads:
            t.start()
        try:
            for _ in range(5):
                r = server.post(f"/v2/repository/models/{DIGITS}/load")
                assert r.status_code == 200, r.text
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        assert not wrong, wrong[:5]
        assert seen["keep-alive"] > 50 and seen["fresh"] > 50, seen
        assert not server.worker_pids() & before  # every worker was replaced


def test_a_crashed_workers_replacement_shares_the_masters_copies(tmp_path, digits_forest,
                                                                 digits):
    with digits_server(tmp_path, digits_forest) as server:
        assert server.post(f"/v2/repository/models/{DIGITS}/unload").status_code == 200
        assert server.post(f"/v2/repository/models/{DIGITS}/load").status_code == 200
        # every worker serves, and none is stopping (the load may have come
        # while gunicorn was still starting workers, and its caller exits last)
        pids = wait_until(lambda: len(p := serving(server)) == 4 and p == server.worker_pids()
                          and p, timeout=30)
        os.kill(next(iter(pids)), signal.SIGKILL)
        try:
            wait_until(lambda: len(server.worker_pids() - pids) == 1 and
                       len(server.worker_pids()) == 4, timeout=30)
        except AssertionError:
            raise AssertionError(f"workers {server.worker_pids()}, before the kill {pids}:\n"
                                 f"{server.log_tail(80)}") from None
        replies = spread(lambda: server.infer(DIGITS, v2_body(digits[:2])), 64)
        truth = digits_forest[1].predict(digits[:2]).tolist()
        assert all(r.status_code == 200 and output(r).ravel().tolist() == truth
                   for r in replies), [r.text for r in replies if r.status_code != 200]
        assert set(copy_events(server)) == {server.proc.pid}


def test_metrics_count_across_worker_generations_in_few_files(tmp_path, digits_forest, digits):
    with digits_server(tmp_path, digits_forest) as server:
        for _ in range(20):
            assert server.infer(DIGITS, v2_body(digits[:1])).status_code == 200
        for _ in range(3):
            assert server.post(f"/v2/repository/models/{DIGITS}/load").status_code == 200

        def counted() -> float:
            stats = server.get(f"/v2/models/{DIGITS}/stats").json()["model_stats"][0]
            return stats["inference_stats"]["success"]["count"]

        wait_until(lambda: counted() == 20)
        # three files per live worker, the master's, and one set for every
        # retired worker, once the replaced workers have been reaped
        wait_until(lambda: len(list((server.state / "metrics").glob("*.db"))) <= 3 * (4 + 2),
                   timeout=30)
        text = server.get("/metrics").text
        line = next(l for l in text.splitlines() if l.startswith(
            "depot_inference_request_duration_seconds_count") and DIGITS in l)
        assert float(line.split()[-1]) == 20
