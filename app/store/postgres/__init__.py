"""The shared store for many hosts: PostgreSQL, one database for a deployment.

The same three tables as :mod:`app.store.sqlite` (models, meta, changes) and
the same rules: every write bumps the change counter in its own transaction,
and a reader that sees the mark it saw before has seen every write that
returned. What differs is how the mark reaches a host: reading it from the
database on every request would put a round trip on the inference path, so
each process keeps the mark, and the rows as of it, locally
(:mod:`.listener`). A write also takes the rows as of its own mark, so the
writer never serves older ones.

:class:`PostgresStore` reads and writes the rows; its parts each have one
job: the sessions and the database's identity (:mod:`.database`), the change
mark, acknowledgements and lease (:mod:`.listener`), and the advisory locks
(:mod:`.locks`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
from pathlib import Path
from typing import Callable, ContextManager

from psycopg import errors as pg

from ...errors import DepotError
from .. import folder as state_folder
from ..rows import COLUMNS, MARKS, Row, key
from .database import SCHEMA, SCHEMA_ID, SCHEMA_LOCK, Database
from .listener import BUMP, Listener, read_view
from .locks import Locks

__all__ = ["PostgresStore"]

UPSERT = (f"INSERT INTO models ({COLUMNS}) VALUES ({MARKS}) "
          "ON CONFLICT (name, version) DO UPDATE SET "
          + ", ".join(f"{c} = EXCLUDED.{c}" for c in COLUMNS.split(", ")[2:]))


class PostgresStore:
    """The :class:`~app.store.Store` in a PostgreSQL database, shared by
    every host of a deployment. ``state_dir`` stays each host's own folder
    (snapshots, metrics, local files); ``host_id`` names this host to the
    database (``application_name``)."""

    def __init__(self, url: str, state_dir: Path, lock_timeout: float = 10.0,
                 host_id: str | None = None, lease_seconds: float = 10.0) -> None:
        self.folder = Path(state_dir)
        self.host_id = host_id or f"{socket.gethostname()}-{key(str(self.folder))[:8]}"
        self.database = Database(url, self.folder, self.host_id)
        self.where = self.database.where
        self.listener = Listener(self.database, self.host_id, lease_seconds)
        self.locks = Locks(self.database, self.folder, lock_timeout)

    def close(self) -> None:
        """End this process's sessions, having taken it off the list of
        processes a control call waits for; its listener stops within a
        heartbeat."""
        database = self.database
        proc = database.proc
        if proc is None or proc.pid != os.getpid():
            return  # a parent's sessions: never close them from a child
        proc.stopping.set()
        with contextlib.suppress(DepotError):
            self.listener.forget(proc)
        database.proc = None
        with proc.guard:
            database.drop(proc)

    # -- the change mark, and who has applied it (app/store/postgres/listener.py)

    def change_mark(self) -> int:
        return self.listener.change_mark()

    def vouches(self) -> bool:
        return self.listener.vouches()

    def wait_applied(self) -> None:
        self.listener.wait_applied()

    # -- reads and writes -------------------------------------------------------

    def get(self, name: str, version: str) -> Row | None:
        with self.database.session() as conn:
            found = conn.execute(f"SELECT {COLUMNS} FROM models WHERE name = %s AND version = %s",
                                 (name, version)).fetchone()
        return Row(*found) if found else None

    def rows_as_of(self, mark: int) -> list[Row]:
        """The rows as of ``mark`` or later: the ones this process's listener
        (or its own last write) read, when they are that new; else read."""
        proc = self.database.here()
        view = proc.view
        if view is not None and view[0] >= mark:
            return view[1]
        return self.rows()

    def rows(self) -> list[Row]:
        with self.database.session() as conn:
            found = conn.execute(f"SELECT {COLUMNS} FROM models ORDER BY name, version").fetchall()
        return [Row(*r) for r in found]

    def put(self, row: Row) -> None:
        self._write((UPSERT, dataclasses.astuple(row)))

    def delete(self, name: str, version: str) -> None:
        self._write(("DELETE FROM models WHERE name = %s AND version = %s", (name, version)))

    def get_meta(self, key: str) -> str | None:
        with self.database.session() as conn:
            found = conn.execute("SELECT value FROM meta WHERE key = %s", (key,)).fetchone()
        return found[0] if found else None

    def set_meta(self, key: str, value: str) -> None:
        self._write(("INSERT INTO meta VALUES (%s, %s) "
                     "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", (key, value)))

    def is_fresh(self) -> bool:
        """Whether this database holds nothing a host could adopt: it was
        never :meth:`reset` by this version of Depot. A database that cannot
        be reached is a 503, never "fresh": that would reset a deployment."""
        with self.database.session() as conn:
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
        with self.database.session() as conn:
            with conn.transaction():
                for sql, params in statements:
                    conn.execute(sql, params)
                conn.execute(BUMP)
                mark, rows = read_view(conn)
        self.database.here().advance(mark, rows)

    # -- locks (app/store/postgres/locks.py) ----------------------------------------

    def lock(self, name: str, timeout: float | None = None) -> ContextManager[None]:
        return self.locks.lock(name, timeout)

    def become_watcher(self) -> Callable[[], bool]:
        return self.locks.become_watcher()

    # -- health -----------------------------------------------------------------

    def check_identity(self) -> None:
        """Raise :class:`StateUnavailable` unless the database is the one this
        deployment first connected to (same cluster, same database), so no
        host serves one truth while another serves a new, empty one."""
        with self.database.session() as conn:
            self.database.verify(conn)

    def health(self) -> str | None:
        """Why the store cannot take writes now (readiness says it), or None:
        the database cannot be reached, is another one, or is read-only; or
        this host's state folder is read-only or full."""
        problem = state_folder.problem(self.folder)
        if problem is not None:
            return problem
        try:
            with self.database.session() as conn:
                readonly = self.database.verify(conn)
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
        return self.database.refused(e)
