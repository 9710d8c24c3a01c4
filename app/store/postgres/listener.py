"""How a change reaches every process: the change mark each keeps locally,
the acknowledgements that say which mark it has applied, and the lease.

Every write sends ``NOTIFY depot_changes`` in its own transaction, and a
daemon thread per process holds a ``LISTEN`` session, reads the counter
(and, when it moved, the rows) after each notification and each heartbeat,
and then acknowledges that mark in ``acks``. So a request's state check is
a memory read, a host that has acknowledged a change serves it even if the
database goes away right after, and a control call can wait until every
process whose lease is live has applied it.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import psycopg

from ...errors import DepotError
from ..rows import COLUMNS, Row
from .database import _MAKING, RETRY_AFTER, Database, _Process

log = logging.getLogger("depot")

CHANNEL = "depot_changes"
#: one statement bumps the counter and queues its notification; both take
#: effect when (and only if) the transaction commits
BUMP = f"UPDATE changes SET n = n + 1 WHERE id = 0 RETURNING pg_notify('{CHANNEL}', n::text)"
#: the counter and the rows in one statement, so both come from one snapshot
#: (a LEFT JOIN: the counter comes back even when there are no rows)
VIEW = (f"SELECT c.n, {', '.join('m.' + c for c in COLUMNS.split(', '))} "
        "FROM changes c LEFT JOIN models m ON true WHERE c.id = 0 ORDER BY m.name, m.version")
#: seconds the listener waits for a notification before it re-reads the
#: counter anyway (so a lost session or notification costs at most this)
HEARTBEAT = 1.0
#: every process that listens says, in ``acks``, which mark it has applied and
#: when it last could; a control call waits for the others (see wait_applied)
ACK = ("INSERT INTO acks VALUES (%s, %s, now()) ON CONFLICT (process) "
       "DO UPDATE SET mark = EXCLUDED.mark, renewed = now()")
BEHIND = ("SELECT count(*) FROM acks WHERE mark < %s AND process <> %s "
          "AND renewed > now() - make_interval(secs => %s)")
#: seconds between two looks at the others' acknowledgements
ACK_POLL = 0.01
#: a process stops vouching this long before the others give up on it, so a
#: caller that stops waiting for it can be sure it serves no longer
LEASE_MARGIN = 1.0
#: seconds the first change_mark of a process waits for its listener's first read
LISTEN_WAIT = 2.0


def read_view(conn: psycopg.Connection) -> tuple[int, list[Row]]:
    """The counter and every row, read by one statement (one snapshot)."""
    found = conn.execute(VIEW).fetchall()
    return found[0][0], [Row(*r[1:]) for r in found if r[1] is not None]


class Listener:
    """This process's view of the change mark, kept by its listener thread,
    and the lease that says whether it may serve what it knows."""

    def __init__(self, database: Database, host_id: str, lease_seconds: float) -> None:
        self.database = database
        self.host_id = host_id
        self.lease_seconds = lease_seconds

    def change_mark(self) -> int:
        """The newest change mark this process has heard of: a local read,
        no round trip. While the database cannot be reached it stays at the
        last one heard (what a host that cannot hear the database may still
        serve is the lease's question, not this one's)."""
        proc = self.database.proc
        if proc is None or proc.pid != os.getpid() or not proc.listening.is_set():
            proc = self.start()
        return proc.mark

    def start(self) -> _Process:
        """Start this process's listener, and wait (briefly) for its first
        read of the counter, so a new worker starts from the current mark."""
        proc = self.database.here()
        with _MAKING:
            if proc.listener is None:
                proc.listener = threading.Thread(target=self._listen, args=(proc,),
                                                 name="depot-state-listener", daemon=True)
                proc.listen_since = time.monotonic()
                proc.listener.start()
        # Every caller waits until the first read, but no caller past
        # LISTEN_WAIT from the start: a database that is down makes a 503,
        # not a worker that waits on every request.
        proc.listening.wait(max(0.0, proc.listen_since + LISTEN_WAIT - time.monotonic()))
        return proc

    def _listen(self, proc: _Process) -> None:
        """Hold a LISTEN session for as long as the process lives: LISTEN
        first, then read the counter, so a write between the two is heard
        either way; then the counter again after every notification and each
        :data:`HEARTBEAT`, and the rows whenever it moved. A lost session is
        made again."""
        while not proc.stopping.is_set():
            try:
                conn = self.database.connect(proc, wait=True)
            except (DepotError, psycopg.Error):
                proc.stopping.wait(RETRY_AFTER)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not proc.stopping.is_set():
                        (mark,) = conn.execute("SELECT n FROM changes WHERE id = 0").fetchone()
                        if proc.view is None or proc.view[0] < mark:
                            mark, rows = read_view(conn)
                            proc.advance(mark, rows)
                        proc.heard_at = time.monotonic()
                        self._ack(conn, proc)
                        proc.listening.set()
                        # One notification (or a heartbeat's silence), then the
                        # counter and rows are read again and acknowledged above.
                        for _ in conn.notifies(timeout=HEARTBEAT, stop_after=1):
                            proc.heard_at = time.monotonic()
            except psycopg.Error:
                proc.stale = True
                proc.stopping.wait(0.1)  # then a new session, at once if the server is back
            except Exception as e:  # never let the mark freeze: log, then listen again
                log.warning("the state listener failed (%s: %s); it listens again",
                            type(e).__name__, self.database.text(e))
                proc.stopping.wait(RETRY_AFTER)

    def _process(self, proc: _Process) -> str:
        return f"{self.host_id}:{proc.pid}"

    def _ack(self, conn: psycopg.Connection, proc: _Process) -> None:
        """Tell the others which mark this process has applied: it holds the
        rows as of that mark, and its next request serves from them."""
        conn.execute(ACK, (self._process(proc), proc.mark))
        proc.acked_at = time.monotonic()

    def vouches(self) -> bool:
        """Whether this process may serve what it knows: it told the
        database its mark within its lease (less a margin). A process that
        cannot reach the database stops serving before the others stop
        waiting for it, and serves again once its listener is back."""
        proc = self.database.proc
        if proc is None or proc.pid != os.getpid() or not proc.listening.is_set():
            proc = self.start()
        return time.monotonic() - proc.acked_at < self.lease_seconds - LEASE_MARGIN

    def wait_applied(self) -> None:
        """Return once every other process whose lease is live has applied
        this process's newest write, or after a lease at most (a process
        still behind by then no longer serves: see :meth:`vouches`)."""
        proc = self.database.here()
        deadline = time.monotonic() + self.lease_seconds
        while True:
            with self.database.session() as conn:
                (behind,) = conn.execute(
                    BEHIND, (proc.mark, self._process(proc), self.lease_seconds)).fetchone()
            if not behind or time.monotonic() >= deadline:
                return
            time.sleep(ACK_POLL)

    def forget(self, proc: _Process) -> None:
        """Take this process off the list a control call waits for."""
        with self.database.session() as conn:
            conn.execute("DELETE FROM acks WHERE process = %s", (self._process(proc),))
