"""This process's copies follow the store, eagerly; and the master's staging.

A request catches its own copy up when the generation moved (:mod:`.catalog`),
but then that request pays for the load. A background thread in each
process (:meth:`Sync.start_sync`) catches every copy up eagerly, so the
first request after a load is not the one that pays for it; it also drops
the copies of what was unloaded and removes the snapshots no row serves any
more. A start that adopts the deployment's state restores the copies the
loads published (:meth:`Sync.restore`).

On a host run by gunicorn, a model of :data:`SHARED_FROM` bytes or more is
held once, by the master, and shared with its forks (app/registry/master.py):
a load stages the master's copy (:meth:`Sync.stage`) before it publishes,
and the master replaces its workers when it had to build a large copy
itself (a load on another host). :class:`WorkerControl` is what the registry
asks of the master.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Protocol

from ..errors import DepotError, LoadFailed
from ..store import LOADING, READY, Row
from .cache import Key, Refused, RuntimeCache, trim
from .events import event, log
from .snapshots import size

if TYPE_CHECKING:
    from ..settings import Settings
    from .catalog import Catalog
    from .copies import Copies
    from .snapshots import Snapshots

#: artifacts from this size on are loaded by the gunicorn master and shared by
#: fresh workers (app/registry/master.py); a smaller model costs each worker less than
#: replacing the workers does (a fork each, and about a second)
SHARED_FROM = 1 << 20
#: seconds between sync passes once the state has not changed for a while:
#: the pass then only does what a request would do by itself (catch up its
#: copy) a little sooner, or gives memory back a little sooner
IDLE_SYNC_INTERVAL = 1.0


class WorkerControl(Protocol):
    """What the registry asks of the gunicorn master (app/registry/master.py),
    in the master itself and, through its socket, in its workers."""

    def in_worker(self) -> bool:
        """Whether this process is one of the master's workers."""

    def stage(self, row: Row) -> None:
        """Have the master build ``row``'s copy and keep it for its next forks."""

    def replace_workers(self) -> None:
        """Have the master replace every worker by a fork sharing what it staged."""

    def roll_soon(self) -> None:
        """In the master: replace the workers, in the background."""

    def serving_workers(self) -> int:
        """Workers that serve now: started, and not stopping (the console shows it)."""


class Sync:
    """Keeps this process's copies in line with the store, and stages the
    master's copies."""

    def __init__(self, settings: Settings, catalog: Catalog, cache: RuntimeCache,
                 snapshots: Snapshots, copies: Copies) -> None:
        self.settings = settings
        self.catalog = catalog
        self.cache = cache
        self.snapshots = snapshots
        self.copies = copies
        #: the gunicorn master, in it and in its workers
        self.master: WorkerControl | None = None
        #: set in a worker that is stopping: its sync builds no new copies
        self.retiring = False
        self._syncing = 0  # the process whose sync thread runs
        #: the generation whose older snapshots sync last removed, by key
        self._swept: dict[Key, int] = {}

    def sync(self) -> None:
        """Bring this process's cache in line with every row at once. A
        worker that is stopping builds nothing (the fresh forks replacing it
        have the copies); the master replaces its workers when it had to
        build a large copy itself (a load on another host), so they share it."""
        rows = self.catalog.view().rows
        for cached in self.cache.keys():
            row = rows.get(cached)
            if row is None or row.state != READY:
                self.cache.drop(cached)
        self.cache.expire_staged({k: r.generation for k, r in rows.items()
                                  if r.state in (READY, LOADING)})
        shared = False
        for row in rows.values():
            key_ = (row.name, row.version)
            if self._swept.get(key_) != row.generation:
                self.snapshots.discard_older(row.name, row.version, row.generation)
                self._swept[key_] = row.generation
            if row.state != READY or self.cache.generation(key_) == row.generation:
                continue
            if self.cache.refusal(key_, row.generation) is not None:
                continue
            if self.retiring and self.cache.get(key_, row.generation) is None:
                continue
            builds = self.cache.builds
            try:
                self.cache.catch_up(row)
            except Refused as e:
                event("refuse", row.name, row.version, e.reason, logging.WARNING)
                continue
            shared |= self.cache.builds != builds and self._is_large(row)
        if shared and self.master is not None and not self.master.in_worker():
            self.master.roll_soon()
        trim()

    def _is_large(self, row: Row) -> bool:
        try:
            return size(self.snapshots.path(row)) >= SHARED_FROM
        except OSError:
            return False

    def start_sync(self) -> None:
        """Run :meth:`sync` in a daemon thread of this process, forever (a
        fork starts its own: threads do not cross a fork)."""
        if self._syncing == os.getpid():
            return
        self._syncing = os.getpid()

        def loop() -> None:
            said = None  # a lasting fault (the state database gone) is logged once
            wait, seen = self.settings.sync_interval, None
            while True:
                try:
                    self.sync()
                    said = None
                except DepotError as e:
                    if e.message != said:
                        log.error("sync failed: %s", e.message)
                    said = e.message
                except Exception:  # a passing store error must not end the thread
                    log.exception("sync failed")
                # Every wake-up costs the CPU ~0.2 ms here, more than the
                # pass, and under load it takes the GIL from a request: a
                # state that stays still is looked at less and less often.
                mark = self.catalog.seen.mark
                wait = self.settings.sync_interval if mark != seen else min(
                    wait * 2, max(IDLE_SYNC_INTERVAL, self.settings.sync_interval))
                seen = mark
                threading.Event().wait(wait)

        threading.Thread(target=loop, name="depot-sync", daemon=True).start()

    def restore(self, row: Row) -> bool:
        """Load a READY row's copy into this process's cache (in the master,
        so every worker it forks has it). If that fails, this host refuses
        the model and says why; the row, the deployment's, stays as it is."""
        try:
            runtime = self.copies.build(row)
        except Refused as e:
            self.cache.refuse((row.name, row.version), row.generation, e.reason)
            event("refuse", row.name, row.version, e.reason, logging.WARNING)
            return False
        self.cache.put((row.name, row.version), row.generation, runtime)
        event("restore", row.name, row.version, f"generation {row.generation}")
        return True

    def stage(self, row: Row) -> None:
        """In the gunicorn master: build a row's copy from this host's
        snapshot and keep it for its workers, before it is published."""
        try:
            runtime = self.copies.build(row)
        except Refused as e:
            raise LoadFailed(e.reason) from None
        self.cache.stage((row.name, row.version), row.generation, runtime)
