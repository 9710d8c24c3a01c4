"""The keep-alive worker (app/worker.py), spoken to over raw sockets: kept and
pipelined connections, the ways a connection ends, and slow clients."""
from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from conftest import Server, v2_body, wait_until


def connect(server: Server) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def request(method: str, path: str, body: dict | None = None, headers: str = "",
            version: str = "HTTP/1.1") -> bytes:
    data = json.dumps(body).encode() if body is not None else b""
    head = (f"{method} {path} {version}\r\nHost: depot\r\n{headers}"
            f"Content-Length: {len(data)}\r\nContent-Type: application/json\r\n\r\n")
    return head.encode() + data


def read_response(f) -> tuple[int, dict[str, str], bytes]:
    """One response from a socket's file, reading no further than it."""
    status = int(f.readline().split()[1])
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
