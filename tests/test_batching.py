"""Adaptive batching (app/v2/batching.py): requests already read by one worker,
for a model whose model-settings.json gives max_batch_size, answered by one
model call over their stacked rows, each answer what it would be alone."""
from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

import rawhttp
from app.v2 import batching
from conftest import MODELS, Server, run_server, v2_body, wait_until
from runtimes.base import InputRejected, RequestedOutput
from runtimes.sklearn import SKLearnRuntime
from runtimes.xgboost import XGBoostRuntime

SVM, XGB = "mnist-svm", "mushroom-xgboost"


# -- the rendezvous, in-process with the real runtimes ------------------------------

@pytest.fixture(scope="module")
def svm() -> SKLearnRuntime:
    runtime = SKLearnRuntime(MODELS / SVM / "model.joblib")
    runtime.load()
    return runtime


def together(calls: list) -> list:
    """Run each call in a thread of its own; what each returned or raised."""
    found: list = [None] * len(calls)

    def run(i: int) -> None:
        try:
            found[i] = calls[i]()
        except Exception as e:
            found[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return found


def test_stacked_answers_are_each_requests_own(svm, digits) -> None:
    seats = batching.Batch(6).seats()
    parts = [digits[i * 3:i * 3 + 1 + i] for i in range(6)]  # 1 to 6 rows each
    answers = together([lambda s=s, x=x: s.infer(svm, x, []) for s, x in zip(seats, parts)])
    for x, answer in zip(parts, answers):
        assert answer["predict"].tolist() == svm.infer(x, [])["predict"].tolist()
    assert sum(s.executions for s in seats) == 1, "one model call for all six"


def test_requests_that_leave_or_differ_do_not_hold_the_others(svm, digits) -> None:
    seats = batching.Batch(5).seats()
    proba = [RequestedOutput("predict")]
    answers = together([
        lambda: seats[0].infer(svm, digits[:2], []),
        lambda: seats[1].leave(),                       # failed before its model call
        lambda: seats[2].infer(svm, digits[2:4], []),
        lambda: seats[3].infer(svm, digits[4:5], proba),  # other outputs: its own call
        lambda: seats[4].infer(svm, digits[5], []),     # one row as a 1-D array: alone
    ])
    assert answers[1] is None
    assert answers[0]["predict"].tolist() == svm.infer(digits[:2], [])["predict"].tolist()
    assert answers[2]["predict"].tolist() == svm.infer(digits[2:4], [])["predict"].tolist()
    assert answers[3]["predict"].tolist() == svm.infer(digits[4:5], proba)["predict"].tolist()
    assert answers[4]["predict"].tolist() == svm.infer(digits[5], [])["predict"].tolist()
    assert [s.executions for s in seats] == [1, 0, 0, 1, 1]


def test_a_bad_input_gets_its_own_error_and_spoils_no_other(svm, digits) -> None:
    seats = batching.Batch(3).seats()
    bad = digits[:2].copy()
    bad[1, 3] = np.nan  # scikit-learn refuses NaN
    answers = together([lambda: seats[0].infer(svm, digits[:3], []),
                        lambda: seats[1].infer(svm, bad, []),
                        lambda: seats[2].infer(svm, digits[3:4], [])])
    assert isinstance(answers[1], InputRejected) and "NaN" in str(answers[1])
    assert answers[0]["predict"].tolist() == svm.infer(digits[:3], [])["predict"].tolist()
    assert answers[2]["predict"].tolist() == svm.infer(digits[3:4], [])["predict"].tolist()


def test_limits_come_from_inference_routes_only() -> None:
    class Limits:
        def batch_limit(self, name: str, version: str | None = None) -> int:
            return {("m", None): 8, ("m", "2"): 4, ("a b", None): 3}.get((name, version), 0)

    assert batching.limit_for(Limits(), "/v2/models/m/infer") == 8
    assert batching.limit_for(Limits(), "/v2/models/m/versions/2/infer") == 4
    assert batching.limit_for(Limits(), "/v2/models/a%20b/infer") == 3
    for path in ("/v2/models/m/ready", "/v2/models/m/x/infer", "/v2/repository/index",
                 "/v2/models/m/versions/2/ready", "/v2/models/other/infer"):
        assert batching.limit_for(Limits(), path) == 0


# -- one worker, real connections --------------------------------------------------

@contextlib.contextmanager
def batching_server(tmp_path: Path, size: int) -> Iterator[Server]:
    models = tmp_path / "source"
    for name in (SVM, XGB):
        (models / name).mkdir(parents=True)
        for f in (MODELS / name).iterdir():
            (models / name / f.name).write_bytes(f.read_bytes())
        settings = json.loads((models / name / "model-settings.json").read_text())
        settings["max_batch_size"] = size
        (models / name / "model-settings.json").write_text(json.dumps(settings))
    with run_server(tmp_path, workers=1, models=models) as server:
        yield server


def burst(server: Server, path: str, bodies: list[dict]) -> list[tuple[int, dict]]:
    """Send each body on a connection of its own while the worker decodes
    a large request, so all are waiting, whole, when it next looks."""
    slow = rawhttp.request("POST", f"/v2/models/{XGB}/infer", v2_body(
        (np.random.default_rng(0).random((16000, 126)) < 0.2).astype(np.float32)))
    requests = [rawhttp.request("POST", path, body) for body in bodies]
    large = rawhttp.connect(server)
    socks = [rawhttp.connect(server) for _ in bodies]
    try:
        large.sendall(slow)
        for sock, request in zip(socks, requests):
            sock.sendall(request)
        assert rawhttp.read_response(large.makefile("rb"))[0] == 200
        replies = [rawhttp.read_response(sock.makefile("rb")) for sock in socks]
    finally:
        for sock in [large, *socks]:
            sock.close()
    return [(status, json.loads(body)) for status, _, body in replies]


def stats(server: Server, model: str) -> dict:
    return server.get(f"/v2/models/{model}/stats").json()["model_stats"][0]


@pytest.mark.server
def test_waiting_requests_share_one_model_call(tmp_path, digits, mnist_model) -> None:
    with batching_server(tmp_path, 16) as server:
        parts = [digits[i * 4:i * 4 + 1 + i % 4] for i in range(16)]
        replies = burst(server, f"/v2/models/{SVM}/infer",
                        [v2_body(x, id=f"r{i}") for i, x in enumerate(parts)])
        for i, ((status, body), x) in enumerate(zip(replies, parts)):
            assert status == 200 and body["id"] == f"r{i}"
            assert body["outputs"][0]["shape"] == [len(x), 1]
            assert body["outputs"][0]["data"] == mnist_model.predict(x).tolist()
        rows = sum(len(x) for x in parts)
        wait_until(lambda: stats(server, SVM)["inference_count"] == rows)
        counted = stats(server, SVM)
        assert counted["inference_stats"]["success"]["count"] == 16
        assert counted["execution_count"] <= 4, "the burst should take a few calls, not 16"


@pytest.mark.server
def test_batched_answers_are_the_unbatched_ones_exactly(tmp_path, mushrooms) -> None:
    """Probabilities too (floats, compared exactly), with bad requests in
    the burst, each of which gets its own 400."""
    with batching_server(tmp_path, 8) as server:
        both = [{"name": "predict_proba"}, {"name": "predict"}]
        bodies = [v2_body(mushrooms[i:i + 1 + i % 3], outputs=both) for i in range(8)]
        bodies[3] = v2_body(mushrooms[:2, :100], outputs=both)  # too few columns
        bodies[5] = {"inputs": [{"name": "x", "shape": [2, 126], "datatype": "FP32",
                                 "data": [0.0]}]}  # shape and data disagree
        path = f"/v2/models/{XGB}/infer"
        alone = [server.post(path, json=body) for body in bodies]  # one at a time
        replies = burst(server, path, bodies)
        assert [status for status, _ in replies] == [r.status_code for r in alone] == \
            [200] * 3 + [400] + [200] + [400] + [200] * 2
        for (_, body), single in zip(replies, alone):
            if single.status_code == 200:
                assert body["outputs"] == single.json()["outputs"]
            else:
                assert body == single.json()
        assert stats(server, XGB)["execution_count"] < stats(server, XGB)[
            "inference_stats"]["success"]["count"]


def test_a_bad_max_batch_size_is_the_models_error(make_server) -> None:
    with make_server(workers=1) as server:
        settings = server.models / SVM / "model-settings.json"
        body = json.loads(settings.read_text())
        settings.write_text(json.dumps(dict(body, max_batch_size="16")))
        wait_until(lambda: "max_batch_size" in server.index()[SVM]["reason"], timeout=20)
        assert "non-negative integer" in server.index()[SVM]["reason"]


@pytest.mark.server
def test_large_requests_are_answered_each_by_its_own_call(tmp_path, digits, mnist_model) -> None:
    """A 64-row request (20 KiB of JSON) costs more in rows than in the
    model call: grouping those would only delay the first answers."""
    with batching_server(tmp_path, 16) as server:
        parts = [digits[i * 64:(i + 1) * 64] for i in range(6)]
        replies = burst(server, f"/v2/models/{SVM}/infer", [v2_body(x) for x in parts])
        for (status, body), x in zip(replies, parts):
            assert status == 200
            assert body["outputs"][0]["data"] == mnist_model.predict(x).tolist()
        wait_until(lambda: stats(server, SVM)["inference_count"] == 6 * 64)
        assert stats(server, SVM)["execution_count"] == 6
