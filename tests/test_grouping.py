"""Which waiting requests share one model call (app/server/grouping.py),
in-process: the same request line, the oldest first, within the model's
limit and the bytes one call answers; and how the group is run."""
from __future__ import annotations

import threading

import pytest

from app.server.connection import Connection
from app.server.grouping import MAX_BATCH, MAX_BATCH_BYTES, Grouping
from standins import detached

INFER = b"POST /v2/models/m/infer HTTP/1.1\r\nHost: depot\r\nContent-Length: %d\r\n\r\n"
OTHER = b"POST /v2/models/other/infer HTTP/1.1\r\nHost: depot\r\nContent-Length: %d\r\n\r\n"


def whole(head: bytes = INFER, body: int = 10) -> Connection:
    """A connection holding one whole request with a body of ``body`` bytes."""
    conn = detached()
    conn.inbuf += head % body + b"x" * body
    assert conn.frame() is not None
    return conn


class Limits:
    """The app's batch limit per path, counting what it is asked."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.asked: list[str] = []

    def __call__(self, path: str) -> int:
        self.asked.append(path)
        return self.limit


def grouping(limit: int, *waiting: Connection) -> Grouping:
    return Grouping(Limits(limit), dict.fromkeys(waiting), respond=lambda *args: True)


def test_mates_have_the_same_request_line_and_come_oldest_first() -> None:
    first, a, other, b, c = whole(), whole(), whole(OTHER), whole(), whole()
    group = grouping(3, a, other, b, c)
    assert group.mates(first) == [a, b]
    assert list(group.waiting) == [other, c]


@pytest.mark.parametrize("limit", [0, 1])
def test_a_model_that_does_not_batch_has_no_mates(limit: int) -> None:
    first, a = whole(), whole()
    assert grouping(limit, a).mates(first) == []
    assert Grouping(None, {a: None}, respond=lambda *args: True).mates(first) == []


def test_one_call_answers_at_most_max_batch_bytes_of_requests() -> None:
    quarter = MAX_BATCH_BYTES // 4
    first, small, large, last = (whole(body=b) for b in (quarter * 3 // 2, quarter, 2 * quarter,
                                                        quarter))
    group = grouping(64, small, large, last)
    assert group.mates(first) == [small, last]
    assert list(group.waiting) == [large]


def test_the_limit_is_asked_for_inferences_only_and_once_a_second() -> None:
    group = grouping(1000)
    assert group.limit_of(b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\n") == MAX_BATCH
    assert group.limit_of(b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\n") == MAX_BATCH
    assert group.limit_of(b"GET /v2/models/m/infer HTTP/1.1\r\n") == 0
    assert group.limit_of(b"POST /v2/models/m/ready HTTP/1.1\r\n") == 0
    assert group.limit.asked == ["/v2/models/m/infer"]
    group.limits = {line: (0.0, n) for line, (_, n) in group.limits.items()}  # a second later
    group.limit_of(b"POST /v2/models/m/infer?x=1 HTTP/1.1\r\n")
    assert len(group.limit.asked) == 2


def test_a_group_runs_each_request_in_a_thread_with_its_seat() -> None:
    """The first in the caller's thread; the answers come back in order,
    and every seat is left, so no request waits for one that did not infer."""
    seen: list[tuple[Connection, str, object]] = []

    def respond(conn, req, seat) -> bool:
        seen.append((conn, threading.current_thread().name, seat))
        return req != "close"

    conns = [whole() for _ in range(4)]
    group = Grouping(Limits(4), {}, respond)
    try:
        keeps = group.respond_together([(c, "keep", None) for c in conns]
                                       + [(whole(), "close", None)])
    finally:
        if group.pool is not None:
            group.pool.shutdown()
    assert keeps == [True] * 4 + [False]
    threads = {conn: thread for conn, thread, _ in seen}
    assert threads[conns[0]] == threading.current_thread().name
    assert all(threads[c].startswith("depot-batch") for c in conns[1:])
    seats = [seat for _, _, seat in seen]
    assert len({id(s.batch) for s in seats}) == 1 and len(seats) == 5
    assert all(s.batch._open == 0 for s in seats)  # every seat taken or left
