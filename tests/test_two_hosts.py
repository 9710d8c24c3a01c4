"""Two Depot deployments (two gunicorn masters, 2 workers each, their own
state folders) on one PostgreSQL database: a control call on one holds on
the other when it returns."""
from __future__ import annotations

from conftest import run_server, spread, v2_body


def test_an_unload_on_one_host_holds_on_the_other_when_it_returns(tmp_path, postgres_url,
                                                                  digits):
    env = {"DEPOT_STATE_URL": postgres_url, "DEPOT_WATCH": "false"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with run_server(tmp_path / "a", workers=2, env=env) as a, \
            run_server(tmp_path / "b", workers=2, env=env) as b:
        body = v2_body(digits[:1])
        first = spread(lambda: b.infer("mnist-svm", body), 16)
        assert {r.status_code for r in first} == {200}, [r.text for r in first]
        for _ in range(3):
            assert a.post("/v2/repository/models/mnist-svm/unload").status_code == 200
            replies = spread(lambda: b.infer("mnist-svm", body), 16)
            assert {r.status_code for r in replies} == {400}, [r.text for r in replies]
            assert b.index()["mnist-svm"]["state"] == "UNAVAILABLE"
            assert b.post("/v2/repository/models/mnist-svm/load").status_code == 200
            replies = spread(lambda: a.infer("mnist-svm", body), 16)
            assert {r.status_code for r in replies} == {200}, [r.text for r in replies]
            assert a.index()["mnist-svm"]["state"] == "READY"
