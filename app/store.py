"""The shared store: one truth about every model for all worker processes.

SQLite in WAL mode: readers never block each other or the writer, and the file
outlives any worker. Every write also bumps a change counter, committed in the
same transaction and then mirrored into an 8-byte memory-mapped file. Reading
that mirror costs a fraction of a microsecond, so a worker can check the shared
state on every request and re-read the rows only when something changed.
Everything above this module talks to :class:`Store` alone (the change mark,
read rows, a per-model lock, publish a row), so a store shared by many hosts
can replace it without a change above.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import mmap
import os
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"

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
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO changes VALUES (0, 0);
"""
COLUMNS = "name, version, state, reason, generation, runtime, snapshot, source, details, fingerprint"


def key(name: str) -> str:
    """A file-name-safe key for a model name, whatever characters it has."""
    return hashlib.sha1(name.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Row:
    """The shared state of one version of a model. ``generation`` grows on every load and unload;
    a worker whose copy has another generation must catch up before serving.
    ``snapshot`` is the private copy of the artifact that every worker loads,
    so all of them serve the same bytes whatever happens on disk later.
    ``details`` is JSON (parameters, declared inputs/outputs), parsed only
    off the hot path. ``fingerprint`` identifies the files on disk the row
    was made from (for a READY model: the files it was loaded from)."""

    name: str
    version: str  # "" when the model has none
    state: str
    reason: str
    generation: int
    runtime: str | None
    snapshot: str | None
    source: str
    details: str = "{}"
    fingerprint: str = ""

    def replace(self, **changes: object) -> "Row":
        return dataclasses.replace(self, **changes)


class Store:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "registry.sqlite3"
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        """One connection per process and thread: SQLite connections must
        not cross a fork, and gthread workers serve from several threads."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            self.folder.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            with open(self.folder / "changes", "a+b") as handle:
                if os.fstat(handle.fileno()).st_size < 8:
                    handle.write(bytes(8))
                    handle.flush()
                local.mark = mmap.mmap(handle.fileno(), 8)
            local.conn, local.pid = conn, os.getpid()
        return local.conn

    def change_mark(self) -> int:
        """A number that differs after every committed write. Mirrors are
        written after their commit, so a reader that sees the mark it saw
        before has seen every write that has returned."""
        self._connect()
        return int.from_bytes(self._local.mark[:8], "little")

    def get(self, name: str, version: str) -> Row | None:
        found = self._connect().execute(
            f"SELECT {COLUMNS} FROM models WHERE name = ? AND version = ?",
            (name, version)).fetchone()
        return Row(*found) if found else None

    def rows(self) -> list[Row]:
        return [Row(*r) for r in self._connect().execute(
            f"SELECT {COLUMNS} FROM models ORDER BY name, version")]

    def put(self, row: Row) -> None:
        self._write(
            f"INSERT OR REPLACE INTO models ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            dataclasses.astuple(row))

    def delete(self, name: str, version: str) -> None:
        self._write("DELETE FROM models WHERE name = ? AND version = ?", (name, version))

    def get_meta(self, key: str) -> str | None:
        found = self._connect().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def reset(self) -> None:
        """Forget everything: a new deployment starts from the disk, with the
        tables of this version of Depot whatever an older one left behind."""
        conn = self._connect()
        conn.executescript("DROP TABLE IF EXISTS models; DROP TABLE IF EXISTS meta;" + SCHEMA)
        self._write("DELETE FROM meta", ())

    def _write(self, sql: str, params: tuple) -> None:
        """One statement and the change counter in one transaction; every
        counter value is unique, and is mirrored only after its commit."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(sql, params)
            (mark,) = conn.execute("UPDATE changes SET n = n + 1 RETURNING n").fetchone()
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        self._local.mark[:8] = mark.to_bytes(8, "little")

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise control-plane calls on one model across every process
        (and thread: each call opens its own file description)."""
        folder = self.folder / "locks"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{key(name)}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
