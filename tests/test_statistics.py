"""Triton's statistics extension and /metrics, summed over every worker."""
from __future__ import annotations

import json

import requests
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry, Histogram

import rawhttp
from app.metrics import BUCKETS, Metrics
from conftest import spread, v2_body, wait_until

XGB = "mushroom-xgboost"


def fresh(server, model, body):
    return requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30,
                         headers={"Connection": "close"})


def stats_of(server, path="/v2/models/stats"):
    r = server.get(path)
    assert r.status_code == 200, r.text
    return {(s["name"], s["version"]): s for s in r.json()["model_stats"]}


def test_counts_match_the_requests_sent(make_server, mushrooms, digits):
    with make_server() as server:
        before = stats_of(server)[(XGB, "v0.1.0")]
        assert before["execution_count"] == 0 and before["inference_count"] == 0
        for rows in (1, 2, 3, 4, 5):  # 40 requests, 120 rows, spread over the workers
            replies = spread(lambda: fresh(server, XGB, v2_body(mushrooms[:rows])), 8)
            assert [r.status_code for r in replies] == [200] * 8
        replies = spread(lambda: fresh(server, XGB, {"inputs": []}), 7)
        assert [r.status_code for r in replies] == [400] * 7
        assert fresh(server, "nope", v2_body(mushrooms[:1])).status_code == 404

        # counted just after each answer: poll for the last, then stay exact
        wait_until(lambda: stats_of(server)[(XGB, "v0.1.0")]["inference_stats"]["fail"]["count"]
                   == 7 and stats_of(server)[(XGB, "v0.1.0")]["execution_count"] == 40)
        stats = stats_of(server)
        xgb = stats[(XGB, "v0.1.0")]
        assert xgb["execution_count"] == 40
        assert xgb["inference_count"] == 120
        success = xgb["inference_stats"]["success"]
        assert success["count"] == 40 and success["ns"] > 0
        assert xgb["inference_stats"]["fail"]["count"] == 7
        phases = [xgb["inference_stats"][f"compute_{p}"] for p in ("input", "infer", "output")]
        assert all(p["count"] == 40 for p in phases)
        assert sum(p["ns"] for p in phases) <= success["ns"]
        assert xgb["last_inference"] > 0
        assert stats[("mnist-svm", "v0.1.0")]["execution_count"] == 0
        assert ("nope", "") not in stats
        workers = {p.name.rsplit("_", 1)[1] for p in (server.state / "metrics").glob("counter_*")}
        assert len(workers) >= 2, "the requests should have reached several workers"

        r = server.get("/metrics")
        assert r.status_code == 200
        assert f'depot_inference_rows_total{{model="{XGB}",version="v0.1.0"}} 120.0' in r.text
        assert "depot_inference_request_duration_seconds_bucket" in r.text


def test_model_and_version_filters(server):
    only = stats_of(server, f"/v2/models/{XGB}/stats")
    assert list(only) == [(XGB, "v0.1.0")]
    assert list(stats_of(server, f"/v2/models/{XGB}/versions/v0.1.0/stats")) == \
        [(XGB, "v0.1.0")]
    assert server.get("/v2/models/nope/stats").status_code == 404
    assert server.get(f"/v2/models/{XGB}/versions/9/stats").status_code == 404


def test_tritonclient_statistics(server, mushrooms):
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    try:
        before = client.get_inference_statistics(XGB)["model_stats"][0]["execution_count"]
        inp = httpclient.InferInput("x", list(mushrooms.shape), "FP32")
        inp.set_data_from_numpy(mushrooms)
        client.infer(XGB, [inp])
        wait_until(lambda: client.get_inference_statistics(XGB, "v0.1.0")["model_stats"][0][
            "execution_count"] == before + 1)
        everything = client.get_inference_statistics()["model_stats"]
        assert {s["name"] for s in everything} == {"mnist-svm", XGB}
    finally:
        client.close()


def test_extensions_listed(server):
    assert set(server.get("/v2").json()["extensions"]) == {
        "model_repository", "model_repository(unload_dependents)", "binary_tensor_data",
        "classification", "statistics"}


# -- counts held while requests wait ---------------------------------------------

def samples(metrics: Metrics) -> dict[tuple, float]:
    """What this process has written, read without writing what it holds."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() for s in family.samples}


def test_counts_held_while_requests_wait_are_written_once_none_waits() -> None:
    metrics = Metrics(None)
    durations = [0.0003, 0.002, 0.04, 7.0]  # the first bucket, two inner ones, +Inf
    for seconds in durations[:-1]:
        metrics.count(metrics.track("m", "1")._children, seconds, 2, [0.1, 0.2, 0.3],
                      True, hold=True)
    metrics.count(metrics.track("m", "1")._children, 0.5, 0, [], False, hold=True)
    rows = ("depot_inference_rows_total", (("model", "m"), ("version", "1")))
    assert samples(metrics).get(rows) == 0.0, "held while more requests wait"

    metrics.count(metrics.track("m", "1")._children, durations[-1], 2, [0.1, 0.2, 0.3],
                  True, hold=False)
    written = samples(metrics)
    assert written[rows] == 8.0
    labels = (("model", "m"), ("version", "1"))
    assert written[("depot_inference_request_failures_total", labels)] == 1.0
    assert written[("depot_inference_request_failure_seconds_total", labels)] == 0.5
    assert written[("depot_inference_compute_seconds_total",
                    labels[:1] + (("phase", "infer"),) + labels[1:])] == 0.8
    # the histogram is what observing each request would have made
    reference = Histogram("d", "", buckets=BUCKETS, registry=CollectorRegistry())
    for seconds in durations:
        reference.observe(seconds)
    expected = {s.labels.get("le"): s.value for s in reference.collect()[0].samples
                if s.name.endswith(("_bucket", "_count", "_sum"))}
    got = {s.labels.get("le"): s.value for s in metrics.duration.collect()[0].samples
           if s.name.endswith(("_bucket", "_count", "_sum"))}
    assert got == expected


def test_counts_held_under_load_are_written_after_a_while() -> None:
    metrics = Metrics(None)
    children = metrics.track("m", "1")._children
    metrics.count(children, 0.001, 1, [], True, hold=True)
    metrics._unwritten_since -= 1.0  # as if the worker had been busy for a second
    metrics.count(children, 0.001, 1, [], True, hold=True)
    assert samples(metrics)[("depot_inference_rows_total",
                             (("model", "m"), ("version", "1")))] == 2.0


def test_a_burst_on_one_worker_is_counted_and_logged_exactly(make_server, mushrooms):
    """16 requests sent at once on 16 connections to one worker: each
    answer goes out before its counts and log line are written, and every
    one is written, once, before the worker waits again."""
    with make_server(workers=1) as server:
        body = v2_body(mushrooms[:3], id="burst")
        socks = [rawhttp.connect(server) for _ in range(16)]
        try:
            for sock in socks:
                sock.sendall(rawhttp.request("POST", f"/v2/models/{XGB}/infer", body))
            replies = [rawhttp.read_response(sock.makefile("rb")) for sock in socks]
        finally:
            for sock in socks:
                sock.close()
        assert [r[0] for r in replies] == [200] * 16
        assert all(json.loads(r[2])["id"] == "burst" for r in replies)

        wait_until(lambda: written_rows(server) == 48, timeout=10)

        def burst_lines() -> list[dict]:
            return [line for line in server.json_log() if line.get("request_id") == "burst"]

        wait_until(lambda: len(burst_lines()) >= 16, timeout=10)
        xgb = stats_of(server)[(XGB, "v0.1.0")]
        assert (xgb["execution_count"], xgb["inference_count"]) == (16, 48)
        assert [line["status"] for line in burst_lines()] == [200] * 16


def test_a_lone_request_is_written_once_its_worker_is_idle(make_server, mushrooms):
    """Nothing comes after it to write what its worker holds: the worker
    writes it itself, a moment after the answer."""
    with make_server(workers=2) as server:
        assert fresh(server, XGB, v2_body(mushrooms[:2])).status_code == 200
        wait_until(lambda: written_rows(server) == 2, timeout=5)
        r = fresh(server, XGB, v2_body(mushrooms[:3]))  # on a new connection: its first request
        assert r.status_code == 200
        wait_until(lambda: written_rows(server) == 5, timeout=5)


def written_rows(server) -> float:
    """The rows counted in the metrics files, as any other worker reads them."""
    from prometheus_client.multiprocess import MultiProcessCollector
    collected = MultiProcessCollector(None, path=str(server.state / "metrics")).collect()
    return sum(s.value for f in collected for s in f.samples
               if s.name == "depot_inference_rows_total")
