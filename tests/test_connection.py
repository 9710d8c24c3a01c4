"""A connection and a worker's set of them (app/server/connection.py),
in-process over socket pairs: reading without waiting, the head and body
deadlines at an explicit ``now``, writing what the client takes, and each
way a connection ends (refused, overdue, idle, lingering, gone)."""
from __future__ import annotations

import json
import select
import socket
import time
from typing import Callable, Iterator

import pytest

from app.server.connection import CONTINUE, LINGER_SECONDS, Connection, Connections
from standins import MAX_BODY, connections, socket_pair

GET = b"GET /v2/health/live HTTP/1.1\r\nHost: depot\r\n\r\n"
POST = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: depot\r\nContent-Length: 1000\r\n"


@pytest.fixture
def conns() -> Iterator[Connections]:
    conns = connections()
    yield conns
    conns.close_all()
    conns.poller.close()


@pytest.fixture
def connect(conns: Connections) -> Iterator[Callable[[], tuple[Connection, socket.socket]]]:
    """A new connection in ``conns``, and the client's end of it."""
    clients: list[socket.socket] = []

    def connect() -> tuple[Connection, socket.socket]:
        conn, client = socket_pair(conns)
        clients.append(client)
        return conn, client

    yield connect
    for client in clients:
        client.close()


def answer(client: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The one answer the client gets before the server's end closes."""
    data = b""
    while chunk := client.recv(65536):
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def arrive(conns, conn, client: socket.socket, data: bytes) -> None:
    """The client sends, and the poller says the connection is readable."""
    client.sendall(data)
    conns.on_events(conn, select.EPOLLIN)


def test_receive_takes_what_has_arrived_and_never_waits(conns, connect) -> None:
    conn, client = connect()
    conn.receive()
    assert (conn.inbuf, conn.eof) == (bytearray(), False)
    client.sendall(GET[:10])
    conn.receive()
    assert conn.inbuf == GET[:10] and conn.frame() is None
    client.close()
    conn.receive()
    assert conn.eof


def test_the_head_has_header_timeout_from_its_first_byte(conns, connect) -> None:
    conn, client = connect()
    arrive(conns, conn, client, POST[:20])
    assert conn.overdue(conn.started + 9.9, 10.0, 1000.0) is None
    assert "DEPOT_HEADER_TIMEOUT" in conn.overdue(conn.started + 10.1, 10.0, 1000.0)


def test_the_body_must_keep_up_the_minimum_rate(conns, connect) -> None:
    """After the head, the body has header_timeout plus one second per
    min_rate bytes received so far."""
    conn, client = connect()
    arrive(conns, conn, client, POST + b"\r\n" + b"x" * 100)
    assert conn.head_at and conn not in conns.waiting
    assert conn.overdue(conn.head_at + 10.05, 10.0, 1000.0) is None
    assert "DEPOT_MIN_BODY_RATE" in conn.overdue(conn.head_at + 10.15, 10.0, 1000.0)


def test_expect_100_continue_is_answered_once_when_the_head_is_in(conns, connect) -> None:
    conn, client = connect()
    arrive(conns, conn, client, POST + b"Expect: 100-continue\r\n\r\n")
    assert client.recv(100) == CONTINUE
    conn.send(CONTINUE)  # gunicorn's, once it parses the whole request
    assert conn.out == b"" and conn.mask == select.EPOLLIN


def test_a_partial_write_is_finished_as_the_client_reads(conns, connect) -> None:
    """Output first: a connection with an answer to write waits to write,
    not to read, until the client has taken all of it."""
    conn, client = connect()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = bytes(range(256)) * (4 << 10)
    conn.out += sent
    conns.answered(conn, keep=True)
    assert conn.out and conn.mask == select.EPOLLOUT
    got = b""
    while conn.out:
        got += client.recv(1 << 20)
        conns.on_events(conn, select.EPOLLOUT)
    while len(got) < len(sent):
        got += client.recv(1 << 20)
    assert got == sent and conn.mask == select.EPOLLIN


def test_a_whole_request_waits_its_turn_and_a_partial_one_does_not(conns, connect) -> None:
    (whole, a), (partial, b) = connect(), connect()
    arrive(conns, partial, b, GET[:-1])
    arrive(conns, whole, a, GET)
    assert list(conns.waiting) == [whole]
    arrive(conns, partial, b, GET[-1:])
    assert list(conns.waiting) == [whole, partial]


def test_pipelined_requests_are_taken_one_answer_at_a_time(conns, connect) -> None:
    conn, client = connect()
    arrive(conns, conn, client, GET + GET)
    del conns.waiting[conn]  # the worker takes it
    assert conn.take_request()[0] == GET and conn.inbuf == GET
    conn.out += b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    conns.answered(conn, keep=True)
    assert client.recv(100).startswith(b"HTTP/1.1 200") and list(conns.waiting) == [conn]


def test_a_request_that_cannot_be_whole_is_refused_then_drained(conns, connect) -> None:
    """A body over the limit gets its 413 as soon as the head is in; the
    server half-closes, drains what the client still sends, and closes
    once the client has closed too, so the answer is never lost to a reset."""
    closed = []
    conns.on_closed = lambda: closed.append(True)
    conn, client = connect()
    head = POST.replace(b"1000", str(MAX_BODY + 1).encode()) + b"\r\n"
    arrive(conns, conn, client, head + b"x" * 100)
    status, headers, body = answer(client)
    assert (status, headers["connection"]) == (413, "close")
    assert "DEPOT_MAX_BODY_BYTES" in json.loads(body)["error"]
    assert conn.lingering and not closed
    client.sendall(b"x" * 1000)
    conns.on_events(conn, select.EPOLLIN)
    assert not closed
    client.close()
    conns.on_events(conn, select.EPOLLIN)
    assert closed and conn.sock.fileno() < 0 and not conns.by_fd


def test_the_sweep_answers_a_stalled_head_with_408(conns, connect) -> None:
    conn, client = connect()
    arrive(conns, conn, client, POST[:30])
    conns.sweep(time.monotonic() + 5)
    assert not conn.lingering
    conns.sweep(time.monotonic() + 11)
    status, _, body = answer(client)
    assert status == 408 and "DEPOT_HEADER_TIMEOUT" in json.loads(body)["error"]


def test_the_sweep_reads_what_came_while_the_worker_was_busy(conns, connect) -> None:
    """Only bytes that truly have not come count against a client."""
    conn, client = connect()
    arrive(conns, conn, client, GET[:10])
    client.sendall(GET[10:])  # the poller has not said so yet
    conns.sweep(time.monotonic() + 11)
    assert list(conns.waiting) == [conn] and not conn.out


def test_an_idle_connection_ends_after_keepalive_then_its_linger(conns, connect) -> None:
    conn, client = connect()
    conns.sweep(time.monotonic() + 4)
    assert not conn.lingering
    conns.sweep(time.monotonic() + 6)
    assert conn.lingering and client.recv(1) == b""  # half-closed: the client sees the end
    conns.sweep(time.monotonic() + LINGER_SECONDS - 0.5)
    assert conns.by_fd
    conns.sweep(time.monotonic() + LINGER_SECONDS + 0.5)
    assert not conns.by_fd


def test_an_idle_connection_written_to_meanwhile_is_served(conns, connect) -> None:
    conn, client = connect()
    client.sendall(GET)  # during a long request: the poller has not said so yet
    conns.sweep(time.monotonic() + 6)
    assert not conn.lingering and list(conns.waiting) == [conn]


def test_a_client_that_takes_no_output_is_dropped_after_the_write_timeout(conns, connect) -> None:
    conn, client = connect()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.out += b"x" * (1 << 20)
    conns.answered(conn, keep=True)
    conns.sweep(time.monotonic() + 29)
    assert conns.by_fd
    conns.sweep(time.monotonic() + 31)
    assert not conns.by_fd and conns.log.lines[-1][0] == "info"


def test_a_connection_whose_request_runs_in_a_thread_is_left_alone(conns, connect) -> None:
    conn, client = connect()
    arrive(conns, conn, client, POST[:30])
    conn.busy_since = time.monotonic()
    conns.on_events(conn, select.EPOLLIN | select.EPOLLOUT)
    conns.sweep(time.monotonic() + 60)
    assert conns.by_fd and not conn.out and not conn.lingering


def test_a_client_that_leaves_half_way_is_closed_without_an_answer(conns, connect) -> None:
    conn, client = connect()
    arrive(conns, conn, client, POST[:30])
    client.shutdown(socket.SHUT_WR)
    conns.on_events(conn, select.EPOLLIN)
    assert not conns.by_fd and client.recv(100) == b""
