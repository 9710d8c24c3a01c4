"""One deployment's PostgreSQL database as each process reaches it: sessions,
the database's identity, and what its failures mean.

Connections never cross a fork: gunicorn's master uses the store before it
forks the workers, and a libpq session shared by two processes interleaves
their bytes. Each process (found by its PID) has its own :class:`_Process`
state and opens its own sessions: one for reads and writes (one call at a
time), one for its listener (:mod:`.listener`), and one for each lock it
holds (:mod:`.locks`).

A database that cannot be reached is a 503 that says so, never a psycopg
traceback, and the next call reconnects by itself. No message names the
password of the URL.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path
from typing import Iterator

import psycopg
from psycopg import errors as pg
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus

from ...errors import DepotError, InsufficientStorage, StateUnavailable
from ...settings import SettingsError
from .. import folder as state_folder
from ..rows import Row

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
#: as in SQLite: a database whose meta says otherwise holds no state of this
#: version of Depot (it is new, or an older Depot's) and has nothing to adopt
SCHEMA_ID = hashlib.sha1(SCHEMA.encode()).hexdigest()[:12]
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

#: seconds after a failed connection during which calls fail at once
#: instead of each waiting for its own connection attempt to time out
RETRY_AFTER = 1.0
#: libpq options unless the URL sets them: a dead server or network is
#: noticed in seconds, not after the kernel's two hours
OPTIONS = {"connect_timeout": "5", "keepalives": "1", "keepalives_idle": "5",
           "keepalives_interval": "2", "keepalives_count": "3", "tcp_user_timeout": "10000"}
#: held while a store makes its per-process state, and across every fork,
#: so a child never inherits it taken
_MAKING = threading.Lock()
os.register_at_fork(before=_MAKING.acquire, after_in_parent=_MAKING.release,
                    after_in_child=_MAKING.release)



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


class Database:
    """The deployment's database, as this process reaches it: its sessions
    (made again after a failure or a fork), its identity, checked on every
    new session, and the errors its failures become."""

    def __init__(self, url: str, folder: Path, host_id: str) -> None:
        #: this host's own state folder (snapshots, metrics, local locks)
        self.folder = folder
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
        params.setdefault("application_name", f"depot {host_id}"[:63])
        self._params = params
        #: who the database was when this deployment first connected (in the
        #: gunicorn master, before it forks, so every worker holds the same)
        self._identity: tuple[str, int] | None = None
        self.proc: _Process | None = None

    def here(self) -> _Process:
        proc = self.proc
        if proc is not None and proc.pid == os.getpid():
            return proc
        with _MAKING:
            proc = self.proc
            if proc is None or proc.pid != os.getpid():
                proc = self.proc = _Process(proc.mark if proc else 0)
        return proc

    def connect(self, proc: _Process, wait: bool = False) -> psycopg.Connection:
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
            self.verify(conn)
        except BaseException as e:
            conn.close()
            if isinstance(e, psycopg.Error):
                raise self.failed(e) from e
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

    def verify(self, conn: psycopg.Connection) -> bool:
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
    def session(self) -> Iterator[psycopg.Connection]:
        """This process's shared session, one call at a time, (re)connected
        when needed. A failure of the database leaves as a DepotError, and
        a broken session is dropped so the next call makes a new one."""
        proc = self.here()
        with proc.guard:
            if proc.conn is None or proc.conn.closed or proc.stale:
                self.drop(proc)
                proc.stale = False
                proc.conn = self.connect(proc)
            conn = proc.conn
            try:
                yield conn
            except psycopg.Error as e:
                if conn.broken or isinstance(e, (psycopg.OperationalError,
                                                 psycopg.InterfaceError)):
                    self.drop(proc)
                raise self.failed(e) from e
            finally:
                if proc.conn is conn and conn.info.transaction_status != TransactionStatus.IDLE:
                    self.drop(proc)  # interrupted mid-call: its state is unknown

    @staticmethod
    def drop(proc: _Process) -> None:
        conn, proc.conn = proc.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()

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
        text = self.text(e)
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

    def failed(self, e: psycopg.Error) -> BaseException:
        return self.refused(e) or e

    def _unreachable(self, e: psycopg.Error) -> StateUnavailable:
        sqlstate = getattr(e, "sqlstate", None)
        if sqlstate is None or sqlstate.startswith(("08", "57P")) or isinstance(
                e, psycopg.InterfaceError):
            return StateUnavailable(f"the state database at {self.where} is unreachable: "
                                    f"{self.text(e)}; Depot retries")
        return StateUnavailable(f"the state database at {self.where} refused the call: "
                                f"{self.text(e)}; try again")

    def text(self, e: BaseException) -> str:
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
