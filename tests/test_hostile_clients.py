"""No client can take the server down: slow and stalled senders, malformed
bodies, descriptor exhaustion and a master that dies, against real
multi-worker servers over raw sockets."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest
import requests

from conftest import Server, run_server, slow_artifact, v2_body, wait_until
from rawhttp import closed_by_server, connect, read_response, request

pytestmark = pytest.mark.server

HEAD = (b"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: depot\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")


def probe_latencies(server: Server, times: int) -> list[float]:
    """Fresh-connection requests, one after another: how long each took."""
    took = []
    for _ in range(times):
        started = time.monotonic()
        reply = requests.get(server.url + "/v2/health/ready", timeout=5,
                             headers={"Connection": "close"})
        assert reply.status_code == 200, reply.text
        took.append(time.monotonic() - started)
        time.sleep(0.05)
    return took


class Trickle:
    """A client that sends ``prefix`` at once, then ``data`` one byte every
    ``every`` seconds from its own thread, then waits for the answer."""

    def __init__(self, server: Server, prefix: bytes, data: bytes, every: float) -> None:
        self.sock = connect(server)
        self.sock.sendall(prefix)
        self.answer: tuple | None = None
        self.thread = threading.Thread(target=self._run, args=(data, every), daemon=True)
        self.thread.start()

    def _run(self, data: bytes, every: float) -> None:
        try:
            for i in range(len(data)):
                self.sock.settimeout(every)
                try:
                    if self.sock.recv(1, socket.MSG_PEEK):
                        break  # the server has answered
                except TimeoutError:
                    pass
                self.sock.sendall(data[i:i + 1])
            self.sock.settimeout(15)
            with self.sock.makefile("rb") as f:
                self.answer = read_response(f)
        except OSError:
            pass


ATTACKS = {  # (sent at once, then trickled a byte at a time)
    "slow-head": (b"", HEAD),
    "slow-body": (HEAD, b"1" * 1000),
    "stalled-body": (HEAD + b'{"inputs": [' + b" " * 400, b""),
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_slow_clients_cost_a_socket_not_a_worker(make_server, attack: str) -> None:
    """4x the worker count of slow clients: a normal client's fresh
    connections are answered as fast as without them, and each slow client
    gets a 408 at its deadline, not an outage."""
    with make_server(workers=2, env={"DEPOT_HEADER_TIMEOUT": "3"}) as server:
        before = max(probe_latencies(server, 10))
        attackers = [Trickle(server, *ATTACKS[attack], every=0.2) for _ in range(8)]
        try:
            during = probe_latencies(server, 30)
            assert max(during) < max(0.5, 10 * before), (before, during)
            for t in attackers:
                t.thread.join(timeout=20)
            answers = [t.answer and (t.answer[0], t.answer[1].get("connection")) for t in attackers]
            assert answers == [(408, "close")] * 8
        finally:
            for t in attackers:
                t.sock.close()
        log = server.log.read_text()
        assert "WORKER TIMEOUT" not in log and "Traceback" not in log


def test_a_body_over_the_limit_is_refused_before_it_is_sent(server: Server) -> None:
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(HEAD.replace(b"1000", b"1000000000"))
        status, headers, body = read_response(f)
        assert (status, headers["connection"]) == (413, "close")
        assert "DEPOT_MAX_BODY_BYTES" in json.loads(body)["error"]


@pytest.mark.parametrize("chunks", [
    b"zz\r\nab\r\n0\r\n\r\n",
    b"-1\r\nab\r\n0\r\n\r\n",
    b"0x2\r\nab\r\n0\r\n\r\n",
    b" 2\r\nab\r\n0\r\n\r\n",
    b"2\r\nabc\r\n0\r\n\r\n",
], ids=["zz", "-1", "0x2", "space-2", "wrong-length"])
def test_malformed_chunked_bodies_are_400_json(server: Server, chunks: bytes) -> None:
    head = (b"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: depot\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    with connect(server) as sock, sock.makefile("rb") as f:
        sock.sendall(head + chunks)
        status, headers, body = read_response(f)
        assert (status, headers["content-type"], headers["connection"]) == \
            (400, "application/json", "close")
        assert "malformed chunked body" in json.loads(body)["error"]
        assert closed_by_server(sock, timeout=10)
    assert "Traceback" not in server.log.read_text()


def test_a_load_delays_no_other_request_of_its_worker(make_server, digits) -> None:
    """One worker, and a model load of 4 s: meanwhile the same worker
    answers an inference on a kept-alive connection, an index whose body
    comes well after its head, and fresh connections."""
    with make_server(workers=1, env={"DEPOT_HEADER_TIMEOUT": "1",
                                     "GUNICORN_CMD_ARGS": "--keep-alive 1"}) as server:
        (server.models / "slow.joblib").write_bytes(slow_artifact(4))
        wait_until(lambda: "slow" in server.index(), timeout=10)
        with connect(server) as kept, kept.makefile("rb") as kept_file, \
                connect(server) as late, late.makefile("rb") as late_file, \
                ThreadPoolExecutor(1) as pool:
            kept.sendall(request("GET", "/v2/health/live"))
            assert read_response(kept_file)[0] == 200
            late.sendall(b"POST /v2/repository/index HTTP/1.1\r\nHost: depot\r\n"
                         b"Content-Length: 2\r\n\r\n")
            load = pool.submit(requests.post, f"{server.url}/v2/repository/models/slow/load",
                               timeout=30)
            wait_until(lambda: server.index()["slow"]["state"] == "LOADING", timeout=10)
            kept.sendall(request("POST", "/v2/models/mnist-svm/infer", v2_body(digits[:2])))
            status, _, reply = read_response(kept_file)
            assert status == 200 and len(json.loads(reply)["outputs"][0]["data"]) == 2
            time.sleep(0.5)
            late.sendall(b"{}")
            status, _, reply = read_response(late_file)
            assert status == 200 and {e["name"] for e in json.loads(reply)} >= {"slow"}
            assert max(probe_latencies(server, 5)) < 1
            assert not load.done(), "the load ended before the requests did"
            assert load.result(timeout=30).status_code == 400  # sleep() gives no model


def test_descriptor_limit_bounds_connections_without_crashes(tmp_path) -> None:
    """RLIMIT_NOFILE of 256 and 600 idle connections: each worker holds what
    its descriptors allow and leaves the rest queued, and nothing crashes.
    Then the limit is lowered under the running workers, so accept() itself
    runs out of descriptors: the workers pause accepting and carry on."""
    with run_server(tmp_path, workers=2, nofile=256,
                    env={"GUNICORN_CMD_ARGS": "--keep-alive 2"}) as server, ExitStack() as held:
        workers = wait_until(lambda: len(server.worker_pids()) == 2 and server.worker_pids())
        kept = held.enter_context(connect(server))
        kept_file = held.enter_context(kept.makefile("rb"))
        idle = [held.enter_context(connect(server)) for _ in range(600)]
        kept.sendall(request("GET", "/v2/health/live"))
        assert read_response(kept_file)[0] == 200
        for sock in idle:
            sock.close()
        wait_until(lambda: probe_latencies(server, 1), timeout=15)

        for pid in workers:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (80, 80))
        idle = [held.enter_context(connect(server)) for _ in range(300)]
        wait_until(lambda: "Cannot accept connections" in server.log.read_text(), timeout=15)
        kept.sendall(request("GET", "/v2/health/live"))
        assert read_response(kept_file)[0] == 200
        for sock in idle:
            sock.close()
        wait_until(lambda: probe_latencies(server, 1), timeout=15)
        assert server.worker_pids() == workers
        log = server.log.read_text()
        assert "Traceback" not in log and "Worker exiting" not in log


def test_workers_exit_when_the_master_is_killed_mid_load(tmp_path) -> None:
    """SIGKILL of the master while a worker is in a long load: the workers
    exit within seconds, releasing the port, and a new server starts on the
    same port and state."""
    first = tmp_path / "first"
    first.mkdir()
    with run_server(first, workers=2) as server:
        (server.models / "slow.joblib").write_bytes(slow_artifact(30))
        wait_until(lambda: "slow" in server.index(), timeout=10)
        workers = server.worker_pids()
        port = int(server.url.rsplit(":", 1)[1])
        with ThreadPoolExecutor(1) as pool:
            pool.submit(_quietly, requests.post,
                        f"{server.url}/v2/repository/models/slow/load", timeout=60)
            wait_until(lambda: server.index()["slow"]["state"] == "LOADING", timeout=10)
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(timeout=10)
            wait_until(lambda: not any(_alive(pid) for pid in workers), timeout=8)
    with run_server(first, workers=2, models=None, port=port) as again:
        assert again.get("/v2/health/ready").status_code == 200
        assert again.index()["mnist-svm"]["state"] == "READY"
        assert again.index()["slow"]["state"] == "UNAVAILABLE"


def _quietly(call, *args, **kw):
    try:
        return call(*args, **kw)
    except requests.RequestException as e:
        return e


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
    return bool(status.stdout.strip()) and not status.stdout.strip().startswith("Z")


def test_a_hung_load_hands_its_worker_over(make_server) -> None:
    """A load still running after gunicorn's timeout: its worker hands over
    to a fresh one (which frees the model's lock), and the server serves on."""
    env = {"GUNICORN_CMD_ARGS": "--timeout 2 --graceful-timeout 1"}
    with make_server(workers=1, env=env) as server:
        (server.models / "hung.joblib").write_bytes(slow_artifact(60))
        wait_until(lambda: "hung" in server.index(), timeout=10)
        (worker,) = server.worker_pids()
        with ThreadPoolExecutor(1) as pool:
            load = pool.submit(_quietly, requests.post,
                               f"{server.url}/v2/repository/models/hung/load", timeout=30)
            wait_until(lambda: server.worker_pids() - {worker}, timeout=15)
            assert isinstance(load.result(timeout=30), requests.RequestException)
        assert "replacing worker" in server.log.read_text()
        assert server.get("/v2/health/ready").status_code == 200
        r = server.post("/v2/repository/models/hung/unload")
        assert r.status_code == 200, r.text
