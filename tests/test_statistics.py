"""Triton's statistics extension and /metrics, summed over every worker."""
from __future__ import annotations

import requests
import tritonclient.http as httpclient

from conftest import spread, v2_body

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
        after = client.get_inference_statistics(XGB, "v0.1.0")["model_stats"][0]
        assert after["execution_count"] == before + 1
        everything = client.get_inference_statistics()["model_stats"]
        assert {s["name"] for s in everything} == {"mnist-svm", XGB}
    finally:
        client.close()


def test_extensions_listed(server):
    assert set(server.get("/v2").json()["extensions"]) == {
        "model_repository", "model_repository(unload_dependents)", "binary_tensor_data",
        "classification", "statistics"}
