"""The keep-alive worker (app/server/worker.py), spoken to over raw sockets: kept and
pipelined connections, the ways a connection ends, and slow clients."""
from __future__ import annotations

import http.client
import json
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from conftest import Server, slow_artifact, v2_body, wait_until
from rawhttp import closed_by_server, connect, owners, read_response, request

pytestmark = pytest.mark.server


def test_connection_is_kept_across_requests(server: Server, digits: np.ndarray, mnist_model) -> None:
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    conn.connect()
    first = conn.sock
    try:
        for i in range(20):
            conn.request("POST", "/v2/models/mnist-svm/infer",
                         body=json.dumps(v2_body(digits[i:i + 1])),
                         headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            data = json.loads(reply.read())
            assert reply.status == 200
            assert reply.getheader("Connection", "").lower() != "close"
            assert data["outputs"][0]["data"] == mnist_model.predict(digits[i:i + 1]).tolist()
            assert conn.sock is first, f"reconnected before request {i}"
    finally:
        conn.close()


def test_pipelined_requests_are_answered_in_order(server: Server, digits: np.ndarray,
                                                  mnist_model) -> None:
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(request("GET", "/v2/health/ready")
                     + request("POST", "/v2/models/mnist-svm/infer", v2_body(digits[:3]))
                     + request("GET", "/v2/models/nope")
                     + request("GET", "/v2/models/mushroom-xgboost"))
        statuses, bodies = zip(*[(s, b) for s, _, b in (read_response(f) for _ in range(4))])
    assert statuses == (200, 200, 404, 200)
    assert json.loads(bodies[1])["outputs"][0]["data"] == mnist_model.predict(digits[:3]).tolist()
    assert json.loads(bodies[3])["name"] == "mushroom-xgboost"


def test_connection_close_from_the_client_is_honoured(server: Server) -> None:
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(request("GET", "/v2/health/live", headers="Connection: close\r\n"))
        status, headers, _ = read_response(f)
        assert (status, headers["connection"]) == (200, "close")
        assert closed_by_server(sock, timeout=10)


def test_http_1_0_gets_one_answer_then_the_close(server: Server) -> None:
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(request("GET", "/v2/health/live", version="HTTP/1.0"))
        assert read_response(f)[0] == 200
        assert closed_by_server(sock, timeout=10)


def test_bad_request_line_gets_400_and_the_connection_ends(server: Server) -> None:
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(b"NOT-HTTP\r\n\r\n")
        assert f.readline().split()[1] == b"400"
        f.read()  # gunicorn's error page, up to the close
    assert server.get("/v2/health/ready").status_code == 200


def test_idle_connection_is_closed_after_keepalive(make_server) -> None:
    with make_server(env={"GUNICORN_CMD_ARGS": "--keep-alive 1"}) as server:
        with connect(server) as sock, sock.makefile("rb") as f:
            sock.sendall(request("GET", "/v2/health/live"))
            assert read_response(f)[0] == 200
            started = time.monotonic()
            sock.sendall(request("GET", "/v2/health/live"))  # still open right after
            assert read_response(f)[0] == 200
            assert closed_by_server(sock, timeout=15)
            assert time.monotonic() - started >= 0.9


def test_stalled_client_is_dropped_and_others_are_served(make_server, tmp_path: Path) -> None:
    """One worker, a client that stops half-way through its headers: the
    worker answers the request that came meanwhile at once, and gives up on
    the stalled one at DEPOT_HEADER_TIMEOUT with a 408."""
    with make_server(workers=1, env={"DEPOT_HEADER_TIMEOUT": "2",
                                     "GUNICORN_CMD_ARGS": "--timeout 4"}) as server:
        worker = server.worker_pids()
        with connect(server) as stalled, stalled.makefile("rb") as f:
            stalled.sendall(b"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: dep")
            started = time.monotonic()
            wait_until(lambda: owners(server, stalled.getsockname()[1]) == list(worker), timeout=10)
            other = server.get("/v2/health/ready")
            assert other.status_code == 200 and other.elapsed.total_seconds() < 1
            status, headers, body = read_response(f)
            assert (status, headers["connection"]) == (408, "close")
            assert "DEPOT_HEADER_TIMEOUT" in json.loads(body)["error"]
            assert 1.5 < time.monotonic() - started < 6
            assert closed_by_server(stalled, timeout=10)
        assert server.worker_pids() == worker
        assert "WORKER TIMEOUT" not in server.log.read_text()


def test_concurrent_kept_connections_spread_over_workers(server: Server, digits: np.ndarray,
                                                        mnist_model) -> None:
    expected = mnist_model.predict(digits[:64]).tolist()

    def client(_: int) -> list[int]:
        conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
        try:
            for _ in range(10):
                conn.request("POST", "/v2/models/mnist-svm/infer",
                             body=json.dumps(v2_body(digits[:64])),
                             headers={"Content-Type": "application/json"})
                reply = conn.getresponse()
                assert reply.status == 200
                assert json.loads(reply.read())["outputs"][0]["data"] == expected
            return owners(server, conn.sock.getsockname()[1])
        finally:
            conn.close()

    with ThreadPoolExecutor(16) as pool:
        holders = set(sum(pool.map(client, range(16)), []))
    assert len(holders) >= 2, f"all 16 connections were served by {holders}"


def test_requests_waiting_at_sigterm_are_answered(make_server, digits: np.ndarray) -> None:
    """A worker told to stop finishes the request in hand and the ones
    already waiting, whole, then ends each connection; no answer is cut."""
    with make_server(workers=1) as server:
        (worker,) = server.worker_pids()
        socks = [connect(server) for _ in range(8)]
        files = [s.makefile("rb") for s in socks]
        try:
            for sock, f in zip(socks, files):  # kept alive and owned by the worker
                sock.sendall(request("GET", "/v2/health/live"))
                assert read_response(f)[0] == 200
            body = request("POST", "/v2/models/mnist-svm/infer", v2_body(digits[:64]))
            for sock in socks:
                sock.sendall(body * 8)  # about 160 ms of work queued
            os.kill(worker, signal.SIGTERM)
            closing = []
            for f in files:
                while (answer := read_response(f)) is not None:
                    status, headers, reply = answer
                    assert status == 200
                    assert len(json.loads(reply)["outputs"][0]["data"]) == 64
                    closing.append(headers["connection"])
            assert "close" in closing, "the stop came after all the work"
        finally:
            for sock, f in zip(socks, files):
                f.close()
                sock.close()


def test_worker_recycled_by_max_requests_closes_its_connection_cleanly(make_server) -> None:
    with make_server(workers=1, env={"GUNICORN_CMD_ARGS": "--max-requests 5"}) as server:
        first = server.worker_pids()
        with requests.Session() as session:
            statuses = [session.get(server.url + "/v2/health/ready", timeout=30).status_code
                        for _ in range(12)]
        assert statuses == [200] * 12
        assert server.worker_pids() != first


@pytest.mark.parametrize("size", [32 << 10, 4 << 20])
def test_unread_body_does_not_leak_into_the_next_request(server: Server, size: int) -> None:
    """A 404 leaves its body unread by the app. The worker framed the whole
    request before the app saw it, so the next request on the connection is
    parsed from where it starts, whatever the body's size."""
    body = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a" * size]}]}
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(request("POST", "/v2/models/nope/infer", body)
                     + request("GET", "/v2/models/mnist-svm/ready"))
        status, _, reply = read_response(f)
        assert status == 404 and "nope" in json.loads(reply)["error"]
        status, _, reply = read_response(f)
        assert (status, json.loads(reply)["ready"]) == (200, True)


@pytest.mark.slow
def test_a_long_request_does_not_hold_up_new_connections(make_server) -> None:
    """While one worker spends seconds on a load, requests on new connections
    go to the free worker, as they would with gunicorn's sync worker."""
    with make_server(workers=2) as server:
        (server.models / "slow.joblib").write_bytes(slow_artifact(4))
        wait_until(lambda: "slow" in server.index(), timeout=10)
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(requests.post, f"{server.url}/v2/repository/models/slow/load",
                               timeout=30)
            wait_until(lambda: server.index()["slow"]["state"] == "LOADING", timeout=10)
            took = []
            for _ in range(20):
                started = time.monotonic()
                assert server.get("/v2/health/ready").status_code == 200
                took.append(time.monotonic() - started)
            assert not load.done(), "the load ended before the requests did"
            assert max(took) < 1.0, took
            assert load.result(timeout=30).status_code == 400  # sleep() gives no model


def test_a_body_that_stops_arriving_gets_408(make_server) -> None:
    """A body that falls behind DEPOT_MIN_BODY_RATE ends in a JSON 408 that
    closes the connection: no 500, no traceback in the log."""
    with make_server(workers=1, env={"DEPOT_HEADER_TIMEOUT": "1"}) as server:
        with connect(server) as sock, sock.makefile("rb") as f:
            sock.sendall(b"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: depot\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                         b'{"inputs": [')
            status, headers, body = read_response(f)
            assert (status, headers["connection"]) == (408, "close")
            assert "DEPOT_MIN_BODY_RATE" in json.loads(body)["error"]
            assert closed_by_server(sock, timeout=10)
        assert server.get("/v2/health/ready").status_code == 200
        assert "Traceback" not in server.log.read_text()
