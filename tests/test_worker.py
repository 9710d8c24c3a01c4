"""The keep-alive worker (app/worker.py), spoken to over raw sockets: kept and
pipelined connections, the ways a connection ends, and slow clients."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

from conftest import Server, slow_artifact, v2_body, wait_until


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def request(method: str, path: str, body: dict | None = None, headers: str = "",
            version: str = "HTTP/1.1") -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} {version}\r\nHost: depot\r\n{headers}"
            f"Content-Length: {len(data)}\r\nContent-Type: application/json\r\n\r\n")
    return head.encode() + data


def read_response(f) -> tuple[int, dict[str, str], bytes] | None:
    """One response from a socket's file, reading no further than it; None
    when the server ended the connection instead."""
    line = f.readline()
    if not line:
        return None
    status = int(line.split()[1])
    headers = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        name, value = line.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return status, headers, f.read(int(headers["content-length"]))


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


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
    worker gives up on it after half of gunicorn's timeout, before the arbiter
    would kill it, and answers the request that queued meanwhile."""
    with make_server(workers=1, env={"GUNICORN_CMD_ARGS": "--timeout 4"}) as server:
        worker = server.worker_pids()
        with connect(server) as stalled:
            stalled.sendall(b"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: dep")
            # Accepted, with bytes waiting: the worker's next turn reads it.
            wait_until(lambda: owners(server, stalled.getsockname()[1]) == list(worker), timeout=10)
            with ThreadPoolExecutor(1) as pool:
                other = pool.submit(server.get, "/v2/health/ready")
                assert other.result(timeout=20).status_code == 200
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


def owners(server: Server, client_port: int) -> list[int]:
    """The worker pids holding the server end of the connection from ``client_port``."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        if remote_port == client_port:
            inodes.add(fields[9])
    found = []
    for pid in server.worker_pids():
        fds = Path(f"/proc/{pid}/fd")
        for fd in fds.iterdir():
            try:
                target = fd.readlink().name
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                found.append(pid)
    return found


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


def test_unread_body_does_not_leak_into_the_next_request(server: Server) -> None:
    """A 404 leaves its body unread. Up to 64 KiB, the worker drains it and
    parses the next request on the connection; a larger one ends the
    connection, but only after the 404 has arrived whole (no reset, as long
    as the rest stays under the linger limit)."""
    def unknown_model(size: int) -> bytes:
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["a" * size]}]}
        return request("POST", "/v2/models/nope/infer", body)

    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(unknown_model(32 << 10) + request("GET", "/v2/models/mnist-svm/ready"))
        assert read_response(f)[0] == 404
        status, _, body = read_response(f)
        assert (status, json.loads(body)["ready"]) == (200, True)
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(unknown_model(512 << 10) + request("GET", "/v2/models/mnist-svm/ready"))
        status, _, body = read_response(f)
        assert status == 404 and "nope" in json.loads(body)["error"]
        assert f.read() == b""  # then the end, not a second answer parsed from the body


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
    """The worker's socket timeout (half of gunicorn's) ends the read: a JSON
    408 that closes the connection, no 500, no traceback in the log."""
    with make_server(workers=1, env={"GUNICORN_CMD_ARGS": "--timeout 4"}) as server:
        with connect(server) as sock, sock.makefile("rb") as f:
            sock.sendall(b"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: depot\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
                         b'{"inputs": [')
            status, headers, body = read_response(f)
            assert (status, headers["connection"]) == (408, "close")
            assert "stopped arriving" in json.loads(body)["error"]
            assert closed_by_server(sock, timeout=10)
        assert server.get("/v2/health/ready").status_code == 200
        assert "Traceback" not in server.log.read_text()
