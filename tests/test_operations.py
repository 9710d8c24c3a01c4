"""Operating Depot: /metrics, the OpenAPI document, JSON logs, signals and
readiness, each against a real multi-worker server."""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import socket
import time
import warnings
from pathlib import Path

import joblib
import jsonschema
import orjson
import pytest
import requests
from sklearn.dummy import DummyClassifier

from app import create_app
from app.web import openapi
from app.settings import Settings
from conftest import MODELS, output, run_server, spread, v2_body, wait_until

XGB = "mushroom-xgboost"


def metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starts with {line_start!r}")


# -- /metrics ----------------------------------------------------------------------------

def test_model_state_and_control_metrics(make_server, mushrooms):
    with make_server() as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        text = server.get("/metrics").text
        assert metric(text, "depot_models_loaded ") == 1
        assert metric(text, f'depot_model_state{{model="{XGB}",state="UNAVAILABLE"') == 1
        assert server.post(f"/v2/repository/models/{XGB}/load").status_code == 200
        assert server.post("/v2/repository/models/nope/load").status_code == 404
        replies = spread(lambda: server.infer(XGB, v2_body(mushrooms[:3])), 30)
        assert {r.status_code for r in replies} == {200}
        # each request is counted just after its answer
        wait_until(lambda: metric(server.get("/metrics").text,
                                  f'depot_inference_rows_total{{model="{XGB}"') == 90)
        text = server.get("/metrics").text
        assert metric(text, "depot_models_loaded ") == 2
        assert metric(text, f'depot_model_state{{model="{XGB}",state="READY"') == 1
        for action in ("load", "unload"):
            assert metric(text, "depot_model_control_duration_seconds_count{"
                          f'action="{action}",model="{XGB}",outcome="success"}}') == 1
        assert 'model="nope"' not in text
        assert metric(text, f'depot_inference_rows_total{{model="{XGB}"') == 90
        assert metric(text, f'depot_inference_request_duration_seconds_count{{model="{XGB}"') \
            == 30


# -- OpenAPI ---------------------------------------------------------------------------------

def test_every_route_is_in_the_document(tmp_path):
    app = create_app(Settings(models=MODELS, state_dir=tmp_path))
    paths = openapi.document("x")["paths"]
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue  # the console's page and its own data are not the API
        path = rule.rule.replace("<", "{").replace(">", "}")
        assert path in paths, f"{rule.rule} is not in the OpenAPI document"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert method.lower() in paths[path], f"{method} {rule.rule} is not described"
    served = {r.rule.replace("<", "{").replace(">", "}") for r in app.url_map.iter_rules()}
    assert set(paths) <= served, "the document describes routes Flask does not have"


def _validator(document: dict, schema: str):
    root = {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    return jsonschema.Draft202012Validator(root)


@pytest.mark.parametrize("method, path, body, status, schema", [
    ("get", "/v2/health/live", None, 200, "Live"),
    ("get", "/v2/health/ready", None, 200, "Ready"),
    ("get", "/v2", None, 200, "ServerMetadata"),
    ("get", "/v2/models/mnist-svm", None, 200, "ModelMetadata"),
    ("get", "/v2/models/mnist-svm/versions/v0.1.0/ready", None, 200, "ModelReady"),
    ("post", "/v2/models/mnist-svm/infer",
     {"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [0] * 64}]},
     200, "InferenceResponse"),
    ("post", "/v2/models/mnist-svm/infer", {"inputs": []}, 400, "Error"),
    ("get", "/v2/models/nope", None, 404, "Error"),
    ("post", "/v2/repository/index", {}, 200, "Index"),
    ("post", "/v2/repository/models/mnist-svm/load", {}, 200, "ControlResponse"),
    ("get", "/v2/models/stats", None, 200, "Statistics"),
    ("get", "/v2/models/mnist-svm/versions/v0.1.0/stats", None, 200, "Statistics"),
])
def test_answers_validate_against_the_document(server, method, path, body, status, schema):
    document = server.get("/v2/openapi.json").json()
    jsonschema.Draft202012Validator.check_schema(document["components"]["schemas"][schema])
    r = getattr(requests, method)(server.url + path, json=body, timeout=30)
    assert r.status_code == status
    template = path.replace("mnist-svm", "{name}").replace("nope", "{name}")
    operation = document["paths"][template.replace("v0.1.0", "{version}")][method]
    assert str(status) in operation["responses"]
    _validator(document, schema).validate(r.json())


# -- logs ------------------------------------------------------------------------------------

def test_log_lines_are_json(make_server, digits):
    with make_server(workers=2) as server:
        r = server.infer("mnist-svm", v2_body(digits[:2], id="trace-me"))
        assert r.status_code == 200
        assert server.post("/v2/repository/models/mnist-svm/unload").status_code == 200
        assert server.infer("mnist-svm", v2_body(digits[:1])).status_code == 400

        def lines():
            return [orjson.loads(line) for line in server.log.read_text().splitlines()
                    if line.strip()]

        access = wait_until(lambda: [l for l in lines() if l.get("request_id") == "trace-me"])
        assert access[0]["type"] == "access" and access[0]["status"] == 200
        assert access[0]["model"] == "mnist-svm" and access[0]["method"] == "POST"
        assert access[0]["duration_ms"] > 0 and access[0]["worker_pid"] in server.worker_pids()
        events = {(l.get("event"), l.get("model")) for l in lines()}
        assert {("register", "mnist-svm"), ("load", "mnist-svm"),
                ("unload", "mnist-svm")} <= events
        unload = next(l for l in lines() if l.get("event") == "unload")
        assert unload["reason"] == "unloaded" and unload["level"] == "info"


def test_held_access_lines_are_what_the_formatter_writes(tmp_path):
    """In-process: lines made in a burst by write_held have the formatter's
    keys, its time format and the duration to the microsecond."""
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from app.server.logs import JsonFormatter, JsonLogger
    from app.environ import HOLDS_WRITES

    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger = JsonLogger(cfg)
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": '/v2/models/a"b/infer',
               "REMOTE_ADDR": "127.0.0.1", "depot.model": 'a"b', "depot.request_id": "r1",
               HOLDS_WRITES: True}
    for micros in (1, 999_999, 86_400_123_456):
        logger.access(SimpleNamespace(status="404 Not Found"), None, environ,
                      timedelta(microseconds=micros))
    assert not (tmp_path / "access.log").read_text()  # held until written
    logger.write_held()
    lines = [orjson.loads(line) for line in (tmp_path / "access.log").read_text().splitlines()]
    assert [line["duration_ms"] for line in lines] == [0.001, 999.999, 86400123.456]
    first = lines[0]
    assert list(first) == ["time", "level", "logger", "pid", "message", "type", "method",
                           "path", "status", "duration_ms", "model", "request_id",
                           "worker_pid", "remote"]
    assert first["message"] == 'POST /v2/models/a"b/infer 404' and first["status"] == 404
    assert first["model"] == 'a"b' and first["pid"] == first["worker_pid"] == os.getpid()
    assert time.strptime(first["time"][:19], "%Y-%m-%dT%H:%M:%S")
    assert first["time"][19] == "." and first["time"][20:23].isdigit() and first["time"][23:] == "Z"

    # a handler of another kind gets the same line through logging
    class Capture(logging.Handler):
        def emit(self, record):
            made.append(orjson.loads(self.format(record)))

    made: list = []
    capture = Capture()
    capture.setFormatter(JsonFormatter())
    handlers, logger.access_log.handlers = logger.access_log.handlers, [capture]
    try:
        logger.access(SimpleNamespace(status="404 Not Found"), None, environ,
                      timedelta(microseconds=1))
        logger.write_held()
    finally:  # the logger is the process's own: the next test gets it back as it was
        logger.access_log.handlers = handlers
    assert list(made[0]) == list(first)
    assert {**made[0], "time": None} == {**first, "time": None}


def test_held_access_lines_are_byte_for_byte_the_whole_line_dumped(tmp_path):
    """In-process: a line made from its route's cached segments is the
    bytes orjson writes for the whole line, whatever the client sent."""
    from datetime import timedelta
    from types import SimpleNamespace

    from gunicorn.config import Config

    from app.server import logs
    from app.environ import HOLDS_WRITES

    cfg = Config()
    cfg.set("accesslog", str(tmp_path / "access.log"))
    logger = logs.JsonLogger(cfg)
    # only gunicorn's file, as in a worker (pytest's own handlers would
    # take the lines through logging)
    handlers = logger.access_log.handlers
    logger.access_log.handlers = [h for h in handlers if type(h) is logging.FileHandler]
    odd = ["", 'a"b', "\x00", "é \u2028", None, "/v2/models/m/infer", "x" * 300]
    expected = []
    try:
        for i, value in enumerate(odd * 3):  # each route twice more: from the cache
            environ = {"REQUEST_METHOD": "POST", "PATH_INFO": value, "REMOTE_ADDR": odd[i % 5],
                       "depot.model": odd[i % 4], "depot.request_id": odd[i % 6],
                       HOLDS_WRITES: True}
            took = timedelta(microseconds=i * 7919)
            logger.access(SimpleNamespace(status="503 Service Unavailable"), None, environ,
                          took)
            expected.append(orjson.dumps({
                "time": logs._timestamp(logger._held[-1][0]), "level": "info",
                "logger": "gunicorn.access", "pid": os.getpid(),
                "message": f"POST {value} 503", "type": "access", "method": "POST",
                "path": value, "status": 503, "duration_ms": i * 7919 / 1000,
                "model": odd[i % 4], "request_id": odd[i % 6], "worker_pid": os.getpid(),
                "remote": odd[i % 5]}))
        logger.write_held()
    finally:
        logger.access_log.handlers = handlers
    assert (tmp_path / "access.log").read_bytes() == b"\n".join(expected) + b"\n"


class _WarnsWhenLoaded:
    """Unpickles by calling warnings.warn, as a library does for an
    artifact saved by another version of it."""

    def __reduce__(self):
        return (warnings.warn, ("this artifact was saved by another version",))


@pytest.mark.server
def test_a_librarys_warnings_while_loading_are_json_events(tmp_path, digits):
    (tmp_path / "models" / "noted").mkdir(parents=True)
    model = DummyClassifier(strategy="most_frequent").fit(digits[:10], [3] * 10)
    model.__dict__["saved_by"] = _WarnsWhenLoaded()
    joblib.dump(model, tmp_path / "models" / "noted" / "model.joblib")
    with run_server(tmp_path, workers=2, models=None) as server:
        assert server.infer("noted", v2_body(digits[:1])).status_code == 200
        assert server.post("/v2/repository/models/noted/load").status_code == 200
        text = server.log.read_text()
        assert all(line.startswith("{") for line in text.splitlines() if line.strip()), \
            [line for line in text.splitlines() if not line.startswith("{")][:3]
        warned = [orjson.loads(line) for line in text.splitlines()
                  if '"event":"warning"' in line]
        assert len(warned) >= 2  # at start-up and at the load
        assert {w["model"] for w in warned} == {"noted"}
        assert warned[0]["reason"] == "UserWarning: this artifact was saved by another version"
        assert warned[0]["level"] == "warning"


def test_log_level_and_access_log_settings(make_server, digits):
    with make_server(workers=1, env={"DEPOT_LOG_LEVEL": "warning",
                                     "DEPOT_ACCESS_LOG": "false"}) as server:
        assert server.infer("mnist-svm", v2_body(digits[:1])).status_code == 200
        assert server.post("/v2/repository/models/mnist-svm/unload").status_code == 200
        for line in server.log.read_text().splitlines():
            entry = orjson.loads(line)
            assert entry.get("type") != "access"
            assert entry["level"] in ("warning", "error", "critical")


# -- an idle server ------------------------------------------------------------------------

def wakeups(server) -> int:
    """Context switches so far of every thread of the server's processes:
    each is a thread that woke up (or was made to give up the CPU)."""
    total = 0
    for pid in server.session_pids():
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            with contextlib.suppress(OSError):
                total += sum(int(line.split()[1]) for line in status.read_text().splitlines()
                             if "ctxt_switches:" in line)
    return total


@pytest.mark.slow
def test_an_idle_server_sleeps_and_still_serves_a_change_at_once(make_server, digits):
    """Every wake-up of an idle thread takes CPU from whatever runs beside
    it, and, under load, the GIL from a request: an idle deployment wakes
    each process about once a second. Polling every 50 ms (the sync) and
    100 ms (the watcher) made ~140 wake-ups a second with four workers;
    now ~14."""
    with make_server() as server:
        time.sleep(3)  # the sync's pause has grown to its idle length
        before, start = wakeups(server), time.monotonic()
        time.sleep(5)
        rate = (wakeups(server) - before) / (time.monotonic() - start)
        assert rate < 40, f"{rate:.0f} wake-ups a second"
        # The per-request check, not the sync, serves a change: every
        # worker refuses an unloaded model from the next request on.
        assert server.post("/v2/repository/models/mnist-svm/unload").status_code == 200
        replies = spread(lambda: server.infer("mnist-svm", v2_body(digits[:1])), 64)
        assert {r.status_code for r in replies} == {400}, {r.status_code for r in replies}


# -- signals and readiness -----------------------------------------------------------------

def test_sighup_reloads_workers_and_keeps_the_registry(make_server, digits, mnist_model):
    with make_server(workers=2) as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        before, index = server.worker_pids(), server.index()
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: len(server.worker_pids()) == 2 and not server.worker_pids() & before,
                   timeout=30)
        assert server.index() == index
        assert server.infer(XGB, v2_body(digits[:1, :1])).status_code == 400
        got = output(server.infer("mnist-svm", v2_body(digits[:3])))
        assert got.ravel().tolist() == mnist_model.predict(digits[:3]).tolist()


def test_sigterm_finishes_the_request_in_flight(make_server, digits, mnist_model):
    with make_server(workers=1) as server:
        body = orjson.dumps(v2_body(digits[:5]))
        host, port = server.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock:
            sock.sendall(f"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: x\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                         + body[:100])
            time.sleep(0.3)  # the worker is now reading this request
            os.kill(server.proc.pid, signal.SIGTERM)
            time.sleep(0.3)
            sock.sendall(body[100:])
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        got = orjson.loads(payload)["outputs"][0]["data"]
        assert got == mnist_model.predict(digits[:5]).tolist()
        assert server.proc.wait(timeout=30) == 0


class _SlowToLoad:
    def __reduce__(self):
        return (time.sleep, (4,))


@pytest.mark.server
def test_readiness_is_503_while_models_load(tmp_path):
    from conftest import run_server

    models = tmp_path / "src"
    models.mkdir()
    (models / "slow.joblib").write_bytes(pickle.dumps(_SlowToLoad()))
    with run_server(tmp_path, workers=2, models=models, wait=False) as server:
        def probe():  # (the Response, in a list: a 503 Response is falsy)
            try:
                return [server.get("/v2/health/ready")]
            except requests.ConnectionError:
                return None

        (first,) = wait_until(probe, timeout=30)
        assert first.status_code == 503 and first.json()["ready"] is False
        (ready,) = wait_until(lambda: (r := probe()) and r[0].status_code == 200 and r,
                              timeout=30)
        assert ready.json() == {"ready": True}
        assert server.index()["slow"]["state"] == "UNAVAILABLE"  # it loaded None: a failure


def test_metrics_on_a_port_of_their_own(make_server, mushrooms):
    from conftest import free_port

    port = free_port()
    with make_server(workers=2, env={"DEPOT_METRICS_PORT": str(port)}) as server:
        replies = spread(lambda: server.infer(XGB, v2_body(mushrooms[:2])), 10)
        assert {r.status_code for r in replies} == {200}
        def scraped() -> str:
            return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

        wait_until(lambda: metric(scraped(), f'depot_inference_rows_total{{model="{XGB}"') == 20)
        text = scraped()
        assert metric(text, "depot_models_loaded ") == 2
        assert "depot_model_state{" in text
