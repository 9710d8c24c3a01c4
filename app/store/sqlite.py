"""The embedded store: SQLite in the state folder, for one host.

WAL mode: readers never block each other or the writer, and the file outlives
any worker. Every write also bumps a change counter, committed in the same
transaction and then mirrored into an 8-byte memory-mapped file. Reading that
mirror costs a fraction of a microsecond, so a worker can check the shared
state on every request and re-read the rows only when something changed.

The files are the deployment's from the moment it first opens them: a
database deleted or replaced later is refused (503), never served beside the
old one, and a write the disk refuses is a 507 (full) or a 503 (read-only).
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import mmap
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

from ..errors import DepotError, InsufficientStorage, ModelBusy, StateUnavailable
from . import folder as state_folder
from .forks import guarded
from .rows import COLUMNS, LOADING, MARKS, READY, UNAVAILABLE, Row, key  # noqa: F401  (re-exported)

SCHEMA = """
CREATE TABLE IF NOT EXISTS models (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL,
    generation INTEGER NOT NULL,
    runtime TEXT,
    snapshot TEXT,
    source TEXT NOT NULL,
    details TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO changes VALUES (0, 0);
"""
#: names these tables: a state folder whose meta says otherwise holds none of
#: this version's (it is new, or an older Depot's) and has nothing to adopt
SCHEMA_ID = hashlib.sha1(SCHEMA.encode()).hexdigest()[:12]


#: seconds between two tries of a model's lock while another call holds it
LOCK_POLL = 0.02
#: free bytes below which the state folder counts as full for readiness: a
#: load needs room for its snapshot, a write room for its WAL frames


class SQLiteStore:
    def __init__(self, folder: Path, lock_timeout: float = 10.0) -> None:
        self.folder = folder
        self.path = folder / "registry.sqlite3"
        self.lock_timeout = lock_timeout
        self._local = threading.local()
        #: (st_dev, st_ino) of the database and of the change mirror, taken
        #: when this process first opened them: the gunicorn master, before
        #: it forks, so every worker holds the same and opens only those
        self._identity: dict[Path, tuple[int, int]] | None = None

    def _connect(self) -> sqlite3.Connection:
        """One connection per process and thread: SQLite connections must
        not cross a fork, and gthread workers serve from several threads.
        Only the first opening may create the files; every later one (a
        forked worker, a new thread) opens those same files or refuses, so
        a deleted database is never quietly replaced by an empty second one.
        On a read-only state folder the files are opened for reading, so
        loaded models serve on, and opened again once it is writable."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid() or (
                local.readonly and os.access(self.folder, os.W_OK)):
            return self._open()
        return local.conn

    @guarded
    def _open(self) -> sqlite3.Connection:
        """This thread's connection, made (see :meth:`_connect`)."""
        local = self._local
        first = self._identity is None
        if first:
            self.folder.mkdir(parents=True, exist_ok=True)
        else:
            self.check_identity()
        readonly = not first and not os.access(self.folder, os.W_OK)
        mode = "rwc" if first else "ro" if readonly else "rw"
        conn = sqlite3.connect(f"{self.path.absolute().as_uri()}?mode={mode}", uri=True,
                               isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        if first:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
        with open(self.folder / "changes",
                  "a+b" if first else "rb" if readonly else "r+b") as handle:
            if os.fstat(handle.fileno()).st_size < 8:
                handle.write(bytes(8))
                handle.flush()
            local.mark = mmap.mmap(handle.fileno(), 8, access=mmap.ACCESS_READ
                                   if readonly else mmap.ACCESS_WRITE)
        if first:
            self._identity = self._identify()
        else:
            self.check_identity()  # not swapped while it was being opened
        if getattr(local, "pid", None) == os.getpid():
            local.conn.close()  # this thread's read-only one
        local.conn, local.pid, local.readonly = conn, os.getpid(), readonly
        return local.conn

    def _identify(self) -> dict[Path, tuple[int, int]]:
        found = {}
        for path in (self.path, self.folder / "changes"):
            st = os.stat(path)
            found[path] = (st.st_dev, st.st_ino)
        return found

    def check_identity(self) -> None:
        """Refuse to go on when the database (or its change mirror) is not
        the file this deployment opened: deleted, or replaced by another.
        Workers that still hold the old one would otherwise serve one truth
        while a new worker serves another."""
        for path, known in (self._identity or {}).items():
            try:
                st = os.stat(path)
                same = (st.st_dev, st.st_ino) == known
            except OSError:
                same = False
            if not same:
                raise StateUnavailable(f"the state database {path} was deleted or replaced "
                                       "while Depot ran; restart the deployment")

    def health(self) -> str | None:
        """Why the state folder cannot take Depot's writes now, or None.
        Readiness reports it before a control call runs into it."""
        try:
            self.check_identity()
        except StateUnavailable as e:
            return e.message
        return state_folder.problem(self.folder)

    def refused(self, e: BaseException) -> DepotError | None:
        """The error to answer when the state folder refused a write (it is
        full, or read-only), or None when ``e`` is some other failure."""
        if isinstance(e, (InsufficientStorage, StateUnavailable)):
            return e
        if isinstance(e, sqlite3.Error):
            text = str(e)
            errno_ = errno.ENOSPC if "disk is full" in text else \
                errno.EROFS if "readonly" in text else None
        else:
            errno_ = e.errno if isinstance(e, OSError) else None
            text = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        return state_folder.refusal(self.folder, errno_, text)

    def close(self) -> None:
        """Nothing to leave: no other process waits for this one."""

    def vouches(self) -> bool:
        """Always: every process of the host reads the same file."""
        return True

    def wait_applied(self) -> None:
        """Nothing to wait for: the change mirror is shared by every process
        of the host, so a write holds for all of them when it returns."""

    def change_mark(self) -> int:
        """A number that differs after every committed write. Mirrors are
        written after their commit, so a reader that sees the mark it saw
        before has seen every write that has returned."""
        self._connect()
        return int.from_bytes(self._local.mark[:8], "little")

    @guarded
    def get(self, name: str, version: str) -> Row | None:
        found = self._connect().execute(
            f"SELECT {COLUMNS} FROM models WHERE name = ? AND version = ?",
            (name, version)).fetchone()
        return Row(*found) if found else None

    @guarded
    def rows(self) -> list[Row]:
        return [Row(*r) for r in self._connect().execute(
            f"SELECT {COLUMNS} FROM models ORDER BY name, version")]

    def rows_as_of(self, mark: int) -> list[Row]:
        """The rows (a local read already: the file is on this host)."""
        return self.rows()

    def put(self, row: Row) -> None:
        self._write(
            f"INSERT OR REPLACE INTO models ({COLUMNS}) VALUES ({MARKS.replace('%s', '?')})",
            dataclasses.astuple(row))

    def delete(self, name: str, version: str) -> None:
        self._write("DELETE FROM models WHERE name = ? AND version = ?", (name, version))

    @guarded
    def get_meta(self, key: str) -> str | None:
        found = self._connect().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def is_fresh(self) -> bool:
        """Whether this state holds nothing a restart could adopt: it was
        never :meth:`reset` by this version of Depot (a new folder, or the
        tables of an older one)."""
        try:
            return self.get_meta("schema") != SCHEMA_ID
        except sqlite3.Error:  # an older meta table
            return True

    @guarded
    def reset(self) -> None:
        """Forget everything: a new deployment starts from the disk, with the
        tables of this version of Depot whatever an older one left behind."""
        conn = self._connect()
        conn.executescript("DROP TABLE IF EXISTS models; DROP TABLE IF EXISTS meta;" + SCHEMA)
        self._write("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_ID,))

    @guarded
    def _write(self, sql: str, params: tuple) -> None:
        """One statement and the change counter in one transaction; every
        counter value is unique, and is mirrored only after its commit.
        Nothing is written to a database that is no longer this deployment's,
        and a write the disk refuses (full, read-only) is a 507 or a 503."""
        conn = self._connect()
        self.check_identity()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(sql, params)
                (mark,) = conn.execute("UPDATE changes SET n = n + 1 RETURNING n").fetchone()
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite may have rolled back already (a full disk)
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as e:
            refused = self.refused(e)
            if refused is None:
                raise
            raise refused from e
        self._local.mark[:8] = mark.to_bytes(8, "little")

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None = None) -> Iterator[None]:
        """Serialise control-plane calls on one model across every process
        (and thread: each call opens its own file description). The wait
        has a deadline: a holder that hangs, or is stopped, makes the next
        caller answer :class:`ModelBusy` after ``timeout`` seconds (else
        ``lock_timeout``) instead of taking its worker down with it."""
        timeout = self.lock_timeout if timeout is None else timeout
        self.check_identity()
        folder = self.folder / "locks"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / f"{key(name)}.lock", "a")
        except OSError as e:
            refused = self.refused(e)
            if refused is None:
                raise
            raise refused from e
        with handle:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ModelBusy(name, timeout) from None
                    time.sleep(min(LOCK_POLL, left))
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def become_watcher(self) -> Callable[[], bool]:
        """Wait until this process is the host's one watcher (the host is
        the deployment): a lock that the kernel frees when its holder dies."""
        state_folder.hold(self.folder / "watcher.lock")
        return lambda: True
