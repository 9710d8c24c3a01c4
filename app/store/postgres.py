"""The shared store for many hosts: PostgreSQL, one database for a deployment.

The same three tables as :mod:`app.store.sqlite` (models, meta, changes) and
the same rules: every write bumps the change counter in its own transaction,
and a reader that sees the mark it saw before has seen every write that
returned. What differs is how the mark reaches a host. Reading it from the
database on every request would put a round trip on the inference path, so
each process keeps the mark, and the rows as of it, locally: every write
sends ``NOTIFY depot_changes`` in the same transaction, and a daemon thread
per process holds a ``LISTEN`` session, reads the counter (and, when it
moved, the rows) after each notification and each heartbeat, and then
acknowledges that mark. A host that has acknowledged a change serves it from
its own copy even if the database goes away right after. A write also takes
the rows as of its own mark, so the writer never serves older ones.

Connections never cross a fork: gunicorn's master uses the store before it
forks the workers, and a libpq session shared by two processes interleaves
their bytes. Each process (found by its PID) opens its own: one for reads and
writes (one call at a time), one for its listener, and one for each model
lock it holds, since a PostgreSQL advisory lock lives as long as the session
that took it (a host that dies frees its locks with its sessions).

A database that cannot be reached is a 503 that says so, never a psycopg
traceback, and the next call reconnects by itself. No message names the
password of the URL.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import psycopg
from psycopg import errors as pg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from ..errors import DepotError, InsufficientStorage, ModelBusy, StateUnavailable
from ..settings import SettingsError
from .rows import COLUMNS, MARKS, Row, key
from . import folder as state_folder

log = logging.getLogger("depot")

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    generation BIGINT NOT NULL,
    runtime TEXT,
    snapshot TEXT,
    source TEXT NOT NULL,
    details TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS acks (process TEXT PRIMARY KEY, mark BIGINT NOT NULL,
                                 renewed TIMESTAMPTZ NOT NULL);
CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY CHECK (id = 0), n BIGINT NOT NULL);
INSERT INTO changes VALUES (0, 0) ON CONFLICT DO NOTHING;
"""
UPSERT = (f"INSERT INTO models ({COLUMNS}) VALUES ({MARKS}) "
          "ON CONFLICT (name, version) DO UPDATE SET "
          + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS.split(", ")[2:]))
#: as in SQLite: a database whose meta says otherwise holds no state of this
#: version of Depot (it is new, or an older Depot's) and has nothing to adopt
SCHEMA_ID = hashlib.sha1(SCHEMA.encode()).hexdigest()[:12]
CHANNEL = "depot_changes"
#: one statement bumps the counter and queues its notification; both take
#: effect when (and only if) the transaction commits
BUMP = f"UPDATE changes SET n = n + 1 WHERE id = 0 RETURNING pg_notify('{CHANNEL}', n::text)"
#: who the database is: a new cluster (initdb) has another system
#: identifier, a database dropped and made again another oid; a promoted
#: standby has both of its primary's, so a failover is the same database
IDENTIFY = """SELECT (SELECT system_identifier FROM pg_control_system())::text, d.oid::bigint,
                     pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'
              FROM pg_database d WHERE d.datname = current_database()"""
IDENTIFY_UNPRIVILEGED = """SELECT '', d.oid::bigint,
                     pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'
              FROM pg_database d WHERE d.datname = current_database()"""
#: the advisory lock that serialises making the tables (two hosts starting at once)
SCHEMA_LOCK = int.from_bytes(hashlib.sha1(b"depot:schema").digest()[:8], "big", signed=True)

#: the counter and the rows in one statement, so both come from one snapshot
#: (a LEFT JOIN: the counter comes back even when there are no rows)
VIEW = (f"SELECT c.n, {', '.join('m.' + c for c in COLUMNS.split(', '))} "
        "FROM changes c LEFT JOIN models m ON true WHERE c.id = 0 ORDER BY m.name, m.version")
#: the advisory lock held by the deployment's one models-folder watcher
WATCH_LOCK = int.from_bytes(hashlib.sha1(b"depot:watcher").digest()[:8], "big", signed=True)
#: seconds between two tries of the watcher's lock, and between two checks
#: that its holder's session is still alive
WATCH_POLL = 1.0
#: seconds between two tries of a model's lock while another call holds it
LOCK_POLL = 0.02
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
#: seconds after a failed connection during which calls fail at once
#: instead of each waiting for its own connection attempt to time out
RETRY_AFTER = 1.0
#: seconds the first change_mark of a process waits for its listener's first read
LISTEN_WAIT = 2.0
#: libpq options unless the URL sets them: a dead server or network is
#: noticed in seconds, not after the kernel's two hours
OPTIONS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "5",
           "keepalives_interval": "2", "keepalives_count": "3", "tcp_user_timeout": "10000"}
#: held while a store makes its per-process state, and across every fork,
#: so a child never inherits it taken
_MAKING = threading.Lock()
os.register_at_fork(before=_MAKING.acquire, after_in_parent=_MAKING.release,
                    after_in_child=_MAKING.release)


def lock_key(name: str) -> int:
    """A model's advisory lock: 64 bits of a hash of its name, so two
    models share a lock only by a 1-in-2^64 chance."""
    return int.from_bytes(hashlib.sha1(b"depot:model:" + name.encode()).digest()[:8],
                          "big", signed=True)


class _Process:
    """One process's side of the store. A forked child makes its own: the
    parent's sessions, locks and listener thread are not its to use."""

    def __init__(self, mark: int) -> None:
        self.pid = os.getpid()
        self.guard = threading.Lock()  # the shared session: one call at a time
        self.conn: psycopg.Connection | None = None
        #: set by the listener when its session was lost: the shared one
        #: went with it, so the next call makes a new one instead of failing
        self.stale = False
        #: the newest change mark this process has heard of
        self.mark = mark
        #: the rows as of a mark, read by the listener (or a write of this
        #: process) when the counter moved: requests serve from them, so a
        #: host that has acknowledged a change keeps serving it even if the
        #: database goes away right after
        self.view: tuple[int, list[Row]] | None = None
        self.advancing = threading.Lock()
        self.listener: threading.Thread | None = None
        self.listen_since = 0.0
        self.listening = threading.Event()  # set once the listener has read the counter
        self.stopping = threading.Event()
        #: monotonic time of the listener's last word from the database
        self.heard_at = 0.0
        #: monotonic time this process last told the database its mark
        self.acked_at = 0.0
        #: after a failed connection: until when to fail at once, and with what
        self.down: tuple[float, StateUnavailable] | None = None

    def advance(self, mark: int, rows: list[Row] | None = None) -> None:
        """Take a newer mark (and the rows as of it); never go back."""
        with self.advancing:
            if rows is not None and (self.view is None or mark > self.view[0]):
                self.view = (mark, rows)
            self.mark = max(self.mark, mark)


class _SessionCheck:
    """Whether a session (and so the advisory locks it holds) is alive:
    asked at most once a :data:`WATCH_POLL`, the answer cached between."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.conn = conn
        self.checked = time.monotonic()
        self.ok = True

    def alive(self) -> bool:
        if self.ok and time.monotonic() - self.checked >= WATCH_POLL:
            try:
                self.conn.execute("SELECT 1")
            except psycopg.Error:
                self.ok = False
                with contextlib.suppress(Exception):
                    self.conn.close()
            self.checked = time.monotonic()
        return self.ok


class PostgresStore:
    """The :class:`~app.store.Store` in a PostgreSQL database, shared by
    every host of a deployment. ``state_dir`` stays each host's own folder
    (snapshots, metrics, local files); ``host_id`` names this host to the
    database (``application_name``)."""

    def __init__(self, url: str, state_dir: Path, lock_timeout: float = 10.0,
                 host_id: str | None = None, lease_seconds: float = 10.0) -> None:
        self.folder = Path(state_dir)
        self.lock_timeout = lock_timeout
        self.lease_seconds = lease_seconds
        self.host_id = host_id or f"{socket.gethostname()}-{key(str(self.folder))[:8]}"
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error as e:
            password = _password_in(url)
            raise SettingsError(f"DEPOT_STATE_URL: {_scrub(_first_line(e), password)}") from None
        self._password = params.get("password")
        host = params.get("host") or params.get("hostaddr") or "localhost"
        self.where = f"{host}:{params.get('port') or 5432}/{params.get('dbname') or ''}"
        for name, value in OPTIONS.items():
            params.setdefault(name, value)
        params.setdefault("application_name", f"depot {self.host_id}"[:63])
        self._params = params
        #: who the database was when this deployment first connected (in the
        #: gunicorn master, before it forks, so every worker holds the same)
        self._identity: tuple[str, int] | None = None
        self._proc: _Process | None = None

    # -- sessions -------------------------------------------------------------

    def _here(self) -> _Process:
        proc = self._proc
        if proc is not None and proc.pid == os.getpid():
            return proc
        with _MAKING:
            proc = self._proc
            if proc is None or proc.pid != os.getpid():
                proc = self._proc = _Process(proc.mark if proc else 0)
        return proc

    def _connect(self, proc: _Process, wait: bool = False) -> psycopg.Connection:
        """A new session, checked to be the deployment's database (a swap
        shows only across a reconnection). After a failed attempt, calls
        fail at once for :data:`RETRY_AFTER` unless they ``wait``."""
        down = proc.down
        if down is not None and not wait and time.monotonic() < down[0]:
            raise down[1]
        try:
            conn = psycopg.connect(**self._params, autocommit=True)
        except psycopg.Error as e:
            failure = self._unreachable(e)
            proc.down = (time.monotonic() + RETRY_AFTER, failure)
            raise failure from e
        try:
            if self._identity is None:
                self._make_tables(conn)
            self._verify(conn)
        except BaseException as e:
            conn.close()
            if isinstance(e, psycopg.Error):
                raise self._failed(e) from e
            raise
        proc.down = None
        return conn

    def _make_tables(self, conn: psycopg.Connection) -> None:
        """The tables, when this deployment's first process finds none;
        hosts that start together take turns."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            conn.execute(SCHEMA)

    def _verify(self, conn: psycopg.Connection) -> bool:
        """Check the database's identity (remembering it the first time);
        return whether it is read-only now."""
        try:
            system, oid, readonly = conn.execute(IDENTIFY).fetchone()
        except pg.InsufficientPrivilege:
            system, oid, readonly = conn.execute(IDENTIFY_UNPRIVILEGED).fetchone()
        if self._identity is None:
            self._identity = (system, oid)
        elif self._identity != (system, oid):
            raise StateUnavailable(
                f"the state database at {self.where} is not the one this deployment opened "
                "(it was replaced or made again while Depot ran); restart the deployment")
        return bool(readonly)

    @contextlib.contextmanager
    def _session(self) -> Iterator[psycopg.Connection]:
        """This process's shared session, one call at a time, (re)connected
        when needed. A failure of the database leaves as a DepotError, and
        a broken session is dropped so the next call makes a new one."""
        proc = self._here()
        with proc.guard:
            if proc.conn is None or proc.conn.closed or proc.stale:
                self._drop(proc)
                proc.stale = False
                proc.conn = self._connect(proc)
            conn = proc.conn
            try:
                yield conn
            except psycopg.Error as e:
                if conn.broken or isinstance(e, (psycopg.OperationalError,
                                                 psycopg.InterfaceError)):
                    self._drop(proc)
                raise self._failed(e) from e
            finally:
                if proc.conn is conn and conn.info.transaction_status != TransactionStatus.IDLE:
                    self._drop(proc)  # interrupted mid-call: its state is unknown

    @staticmethod
    def _drop(proc: _Process) -> None:
        conn, proc.conn = proc.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """End this process's sessions, having taken it off the list of
        processes a control call waits for; its listener stops within a
        heartbeat."""
        proc = self._proc
        if proc is None or proc.pid != os.getpid():
            return  # a parent's sessions: never close them from a child
        proc.stopping.set()
        with contextlib.suppress(DepotError):
            with self._session() as conn:
                conn.execute("DELETE FROM acks WHERE process = %s", (self._process(proc),))
        self._proc = None
        with proc.guard:
            self._drop(proc)

    # -- the change mark --------------------------------------------------------

    def change_mark(self) -> int:
        """The newest change mark this process has heard of: a local read,
        no round trip. While the database cannot be reached it stays at the
        last one heard (what a host that cannot hear the database may still
        serve is the lease's question, not this one's)."""
        proc = self._proc
        if proc is None or proc.pid != os.getpid() or not proc.listening.is_set():
            proc = self._start_listener()
        return proc.mark

    def _start_listener(self) -> _Process:
        """Start this process's listener, and wait (briefly) for its first
        read of the counter, so a new worker starts from the current mark."""
        proc = self._here()
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
                conn = self._connect(proc, wait=True)
            except (DepotError, psycopg.Error):
                proc.stopping.wait(RETRY_AFTER)
                continue
            try:
                with conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not proc.stopping.is_set():
                        (mark,) = conn.execute("SELECT n FROM changes WHERE id = 0").fetchone()
                        if proc.view is None or proc.view[0] < mark:
                            mark, rows = self._read_view(conn)
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
                            type(e).__name__, self._text(e))
                proc.stopping.wait(RETRY_AFTER)

    # -- acknowledgements and the lease ------------------------------------------

    def _process(self, proc: _Process) -> str:
        return f"{self.host_id}:{proc.pid}"

    @staticmethod
    def _read_view(conn: psycopg.Connection) -> tuple[int, list[Row]]:
        """The counter and every row, read by one statement (one snapshot)."""
        found = conn.execute(VIEW).fetchall()
        return found[0][0], [Row(*r[1:]) for r in found if r[1] is not None]

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
        proc = self._proc
        if proc is None or proc.pid != os.getpid() or not proc.listening.is_set():
            proc = self._start_listener()
        return time.monotonic() - proc.acked_at < self.lease_seconds - LEASE_MARGIN

    def wait_applied(self) -> None:
        """Return once every other process whose lease is live has applied
        this process's newest write, or after a lease at most (a process
        still behind by then no longer serves: see :meth:`vouches`)."""
        proc = self._here()
        deadline = time.monotonic() + self.lease_seconds
        while True:
            with self._session() as conn:
                (behind,) = conn.execute(
                    BEHIND, (proc.mark, self._process(proc), self.lease_seconds)).fetchone()
            if not behind or time.monotonic() >= deadline:
                return
            time.sleep(ACK_POLL)

    # -- reads and writes -------------------------------------------------------

    def get(self, name: str, version: str) -> Row | None:
        with self._session() as conn:
            found = conn.execute(f"SELECT {COLUMNS} FROM models WHERE name = %s AND version = %s",
                                 (name, version)).fetchone()
        return Row(*found) if found else None

    def rows_as_of(self, mark: int) -> list[Row]:
        """The rows as of ``mark`` or later: the ones this process's listener
        (or its own last write) read, when they are that new; else read."""
        proc = self._here()
        view = proc.view
        if view is not None and view[0] >= mark:
            return view[1]
        return self.rows()

    def rows(self) -> list[Row]:
        with self._session() as conn:
            found = conn.execute(f"SELECT {COLUMNS} FROM models ORDER BY name, version").fetchall()
        return [Row(*r) for r in found]

    def put(self, row: Row) -> None:
        self._write((UPSERT, dataclasses.astuple(row)))

    def delete(self, name: str, version: str) -> None:
        self._write(("DELETE FROM models WHERE name = %s AND version = %s", (name, version)))

    def get_meta(self, key: str) -> str | None:
        with self._session() as conn:
            found = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return found[0] if found else None

    def set_meta(self, key: str, value: str) -> None:
        self._write(("INSERT INTO meta VALUES (%s, %s) "
                     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value)))

    def is_fresh(self) -> bool:
        """Whether this database holds nothing a host could adopt: it was
        never :meth:`reset` by this version of Depot. A database that cannot
        be reached is a 503, never "fresh": that would reset a deployment."""
        with self._session() as conn:
            try:
                found = conn.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
            except (pg.UndefinedTable, pg.UndefinedColumn):  # an older Depot's meta
                return True
        return found is None or found[0] != SCHEMA_ID

    def reset(self) -> None:
        """Forget everything: a new deployment starts from the disk, with the
        tables of this version of Depot whatever an older one left behind.
        The counter survives, so every mark heard before differs from the
        ones after."""
        self._write(("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,)),
                    ("DROP TABLE IF EXISTS models, meta, acks", None),
                    (SCHEMA, None),
                    ("INSERT INTO meta VALUES ('schema', %s)", (SCHEMA_ID,)))

    def _write(self, *statements: tuple[str, tuple | None]) -> None:
        """The statements, the counter's bump and its notification in one
        transaction; then this process's mark and rows are the write's own."""
        with self._session() as conn:
            with conn.transaction():
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute(BUMP)
                mark, rows = self._read_view(conn)
        self._here().advance(mark, rows)

    # -- the model lock ---------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None = None) -> Iterator[None]:
        """Serialise control calls on one model across every process of every
        host: an advisory lock on a session of its own, tried every
        :data:`LOCK_POLL` seconds for ``timeout`` (else ``lock_timeout``),
        then :class:`ModelBusy`. A holder that dies frees it with its session."""
        timeout = self.lock_timeout if timeout is None else timeout
        conn = self._connect(self._here())
        taken = False
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    (taken,) = conn.execute("SELECT pg_try_advisory_lock(%s)",
                                            (lock_key(name),)).fetchone()
                except psycopg.Error as e:
                    raise self._failed(e) from e
                if taken:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ModelBusy(name, timeout)
                time.sleep(min(LOCK_POLL, left))
            yield
        finally:
            if taken and not conn.broken:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
            with contextlib.suppress(Exception):
                conn.close()  # a lost session has freed the lock already

    # -- the watcher ------------------------------------------------------------

    def become_watcher(self) -> Callable[[], bool]:
        """Wait until this process is the deployment's one watcher: first
        the host's (a file lock, so one process per host asks the database),
        then the deployment's, an advisory lock on a session of its own,
        tried every :data:`WATCH_POLL` seconds. It returns a check that says
        whether the process still is the watcher: once that session is lost
        (the host died, or the database went away) another host may take
        over, so the watcher stops and stands again."""
        state_folder.hold(self.folder / "watcher.lock")
        proc = self._here()
        while True:
            try:
                conn = self._connect(proc, wait=True)
            except DepotError:
                time.sleep(WATCH_POLL)
                continue
            try:
                (taken,) = conn.execute("SELECT pg_try_advisory_lock(%s)",
                                        (WATCH_LOCK,)).fetchone()
            except psycopg.Error:
                taken = False
            if taken:
                return _SessionCheck(conn).alive
            with contextlib.suppress(Exception):
                conn.close()
            time.sleep(WATCH_POLL)

    # -- health -----------------------------------------------------------------

    def check_identity(self) -> None:
        """Raise :class:`StateUnavailable` unless the database is the one this
        deployment first connected to (same cluster, same database), so no
        host serves one truth while another serves a new, empty one."""
        with self._session() as conn:
            self._verify(conn)

    def health(self) -> str | None:
        """Why the store cannot take writes now (readiness says it), or None:
        the database cannot be reached, is another one, or is read-only; or
        this host's state folder is read-only or full."""
        problem = state_folder.problem(self.folder)
        if problem is not None:
            return problem
        try:
            with self._session() as conn:
                readonly = self._verify(conn)
        except DepotError as e:
            return e.message
        if readonly:
            return (f"the state database at {self.where} is read-only (a standby, or "
                    "transactions default to read-only); Depot cannot record loads")
        return None

    def refused(self, e: BaseException) -> DepotError | None:
        """The error to answer when the database (or this host's state
        folder) refused a write: full is a 507, read-only or unreachable a
        503; None when ``e`` is some other failure."""
        if isinstance(e, (InsufficientStorage, StateUnavailable)):
            return e
        if isinstance(e, OSError):
            return state_folder.refusal(self.folder, e.errno, e.strerror or str(e))
        if not isinstance(e, psycopg.Error):
            return None
        text = self._text(e)
        if isinstance(e, pg.DiskFull):
            return InsufficientStorage(f"the state database at {self.where} is full ({text}); "
                                       "free space there, then try again")
        if isinstance(e, pg.ReadOnlySqlTransaction):
            return StateUnavailable(f"the state database at {self.where} is read-only "
                                    f"({text}); Depot cannot record loads until it is writable")
        if isinstance(e, pg.UndefinedTable):
            return StateUnavailable(f"the state database at {self.where} lacks Depot's tables "
                                    f"({text}); restart the deployment")
        if isinstance(e, (psycopg.OperationalError, psycopg.InterfaceError)):
            return self._unreachable(e)
        return None

    def _failed(self, e: psycopg.Error) -> BaseException:
        return self.refused(e) or e

    def _unreachable(self, e: psycopg.Error) -> StateUnavailable:
        sqlstate = getattr(e, "sqlstate", None)
        if sqlstate is None or sqlstate.startswith(("08", "57P")) or isinstance(
                e, psycopg.InterfaceError):
            return StateUnavailable(f"the state database at {self.where} is unreachable: "
                                    f"{self._text(e)}; Depot retries")
        return StateUnavailable(f"the state database at {self.where} refused the call: "
                                f"{self._text(e)}; try again")

    def _text(self, e: BaseException) -> str:
        return _scrub(_first_line(e), self._password)


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].strip()


def _scrub(text: str, password: str | None) -> str:
    """``text`` without the password, should libpq ever echo it."""
    return text.replace(password, "***") if password else text


def _password_in(url: str) -> str | None:
    """The password of a URL that libpq could not parse, to keep it out of
    the message that says so."""
    rest = url.partition("://")[2]
    userinfo = rest.rpartition("@")[0] if "@" in rest else ""
    return userinfo.partition(":")[2] or None
