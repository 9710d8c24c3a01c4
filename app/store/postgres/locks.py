"""Who may act now, across every process of every host: a model's lock for
control calls, and the deployment's one models-folder watcher.

Both are PostgreSQL advisory locks, each on a session of its own, since an
advisory lock lives as long as the session that took it: a host that dies
frees its locks with its sessions.
"""
from __future__ import annotations

import contextlib
import hashlib
import time
from pathlib import Path
from typing import Callable, Iterator

import psycopg

from ...errors import DepotError, ModelBusy
from .. import folder as state_folder
from .database import Database

#: the advisory lock held by the deployment's one models-folder watcher
WATCH_LOCK = int.from_bytes(hashlib.sha1(b"depot:watcher").digest()[:8], "big", signed=True)
#: seconds between two tries of the watcher's lock, and between two checks
#: that its holder's session is still alive
WATCH_POLL = 1.0
#: seconds between two tries of a model's lock while another call holds it
LOCK_POLL = 0.02


def lock_key(name: str) -> int:
    """A model's advisory lock: 64 bits of a hash of its name, so two
    models share a lock only by a 1-in-2^64 chance."""
    return int.from_bytes(hashlib.sha1(b"depot:model:" + name.encode()).digest()[:8],
                          "big", signed=True)


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


class Locks:
    """A model's lock and the watcher's, taken on sessions of their own."""

    def __init__(self, database: Database, folder: Path, lock_timeout: float) -> None:
        self.database = database
        self.folder = folder
        self.lock_timeout = lock_timeout

    @contextlib.contextmanager
    def lock(self, name: str, timeout: float | None = None) -> Iterator[None]:
        """Serialise control calls on one model across every process of every
        host: an advisory lock on a session of its own, tried every
        :data:`LOCK_POLL` seconds for ``timeout`` (else ``lock_timeout``),
        then :class:`ModelBusy`. A holder that dies frees it with its session."""
        timeout = self.lock_timeout if timeout is None else timeout
        conn = self.database.connect(self.database.here())
        taken = False
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    (taken,) = conn.execute("SELECT pg_try_advisory_lock(%s)",
                                            (lock_key(name),)).fetchone()
                except psycopg.Error as e:
                    raise self.database.failed(e) from e
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

    def become_watcher(self) -> Callable[[], bool]:
        """Wait until this process is the deployment's one watcher: first
        the host's (a file lock, so one process per host asks the database),
        then the deployment's, an advisory lock on a session of its own,
        tried every :data:`WATCH_POLL` seconds. It returns a check that says
        whether the process still is the watcher: once that session is lost
        (the host died, or the database went away) another host may take
        over, so the watcher stops and stands again."""
        state_folder.hold(self.folder / "watcher.lock")
        proc = self.database.here()
        while True:
            try:
                conn = self.database.connect(proc, wait=True)
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
