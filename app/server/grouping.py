"""Which waiting requests share one model call, and how they are run together.

When the request a worker takes next is an inference for a model that
batches (``max_batch_size`` above 1), the whole requests waiting behind it
with the same request line join it, oldest first, up to the model's limit,
:data:`MAX_BATCH` and :data:`MAX_BATCH_BYTES`; none is waited for. Each runs
through the app as usual, in a thread of its own (the first in the worker's),
with a seat in one :class:`app.v2.batching.Batch`, where their inputs meet
for one model call; the worker then answers them in order.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from ..v2 import batching
from .connection import Connection
from .framing import Framed

#: requests one model call answers at most, whatever a model's settings say
MAX_BATCH = 64
#: bytes of requests (head and body) one model call answers at most. A
#: model call's fixed cost dominates small requests, which are what
#: batching is for; past ~20 rows of 100 values the rows cost more than the
#: call, and a larger group would only hold back its first answers (measured:
#: p99 rose 20-40% when 64-row requests were grouped by 16)
MAX_BATCH_BYTES = 16 << 10
#: request lines whose limit is remembered at most (clients choose the paths)
KNOWN_LINES = 1024


class Grouping:
    """One worker's grouping of waiting requests into model calls.

    ``limit`` is the app's batch limit for a path (below 2: none are
    grouped; the worker's host gives it: app/server/hooks.py),
    ``waiting`` the worker's queue of whole requests, and ``respond`` runs
    the app for one request with its seat."""

    def __init__(self, limit: Callable[[str], int] | None,
                 waiting: dict[Connection, None],
                 respond: Callable[[Connection, object, batching.Seat], bool]) -> None:
        self.limit = limit
        self.waiting = waiting
        self.respond = respond
        self.limits: dict[bytes, tuple[float, int]] = {}  # request line -> (until, limit)
        self.pool: ThreadPoolExecutor | None = None  # made on first use

    def mates(self, conn: Connection) -> list[Connection]:
        """The waiting connections whose request has the same request line
        as ``conn``'s, if that is an inference the app batches: the oldest
        first, as many as one call may answer with ``conn``'s (the model's
        limit, and :data:`MAX_BATCH_BYTES`), taken off the queue. Only
        requests already whole are grouped; none is waited for."""
        if self.limit is None or not self.waiting:
            return []
        end = conn.inbuf.find(b"\r\n", 0, 8192)
        line = bytes(conn.inbuf[:end + 2]) if end > 0 else b""
        limit = self.limit_of(line)
        if limit < 2:
            return []
        mates: list[Connection] = []
        room = MAX_BATCH_BYTES - conn.framed.length if conn.framed else 0
        for other in self.waiting:
            if len(mates) + 1 >= limit or room <= 0:
                break
            if other.inbuf.startswith(line) and other.framed.length <= room:
                mates.append(other)
                room -= other.framed.length
        for other in mates:
            del self.waiting[other]
        return mates

    def limit_of(self, line: bytes) -> int:
        """The app's batch limit for a request line (0 unless it is an
        inference), asked at most once a second (the answer is a registry
        lookup; a load's new limit applies within the second, and no answer
        depends on it)."""
        now = time.monotonic()
        known = self.limits.get(line)
        if known is not None and known[0] > now:
            return known[1]
        if len(self.limits) >= KNOWN_LINES:
            self.limits.clear()
        limit = 0
        if line.startswith(b"POST "):
            path = line.split(b" ", 2)[1].split(b"?", 1)[0]
            if path.endswith(b"/infer"):
                assert self.limit is not None
                limit = min(self.limit(path.decode("latin-1")), MAX_BATCH)
        self.limits[line] = (now + 1.0, limit)
        return limit

    def respond_together(self, jobs: list[tuple[Connection, object, Framed]]) -> list[bool]:
        """Run each parsed request through the app in a thread of its own
        (the first in this one), each with a seat in one batch; whether each
        connection may carry another request, in order."""
        seats = batching.Batch(len(jobs)).seats()
        if self.pool is None:
            self.pool = ThreadPoolExecutor(MAX_BATCH - 1, thread_name_prefix="depot-batch")
        others = [self.pool.submit(self.respond_seated, conn, req, seat)
                  for (conn, req, _), seat in zip(jobs[1:], seats[1:])]
        keeps = [self.respond_seated(jobs[0][0], jobs[0][1], seats[0])] if jobs else []
        keeps += [future.result() for future in others]
        return keeps

    def respond_seated(self, conn: Connection, req, seat: batching.Seat) -> bool:
        try:
            return self.respond(conn, req, seat)
        finally:
            seat.leave()  # the others wait no longer for a request that did not infer
