"""The models-folder watcher: files that land become registered models.

Exactly one watcher runs per deployment. Every worker starts a thread that
waits to become the watcher (the store's lock: a file lock on one host, and
an advisory lock in the database when hosts share one); the one that gets
it runs the watchdog observer. When that worker dies, however it dies, its
lock goes with it and a waiting worker takes over, so there is never zero
watchers for longer than a takeover, and never two.

Events only say *which* top-level entry of the folder moved. An entry is
reconciled once it has been quiet for :data:`QUIET` seconds, so a copy in
progress is never registered half-written, and a periodic rescan repairs
whatever the event stream missed.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from ..errors import DepotError
from . import Registry
from .repository import ignored

log = logging.getLogger("depot.watcher")

#: seconds without events before an entry is taken as fully written
QUIET = 0.5
#: the shortest wait between two looks for quiet entries
TICK = 0.1
#: seconds between two checks that this process still is the watcher (the
#: watcher sleeps until an event, a quiet entry or a rescan, this long at most)
HOLD_CHECK = 1.0
#: seconds before a worker that could not stand as the watcher stands again
STAND_AGAIN = 1.0


class Watcher(FileSystemEventHandler):
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.root = registry.settings.models
        self.state_dir = registry.settings.state_dir
        self._pending: dict[str, float] = {}  # top-level entry -> last event time
        self._lock = threading.Lock()
        self._moved = threading.Event()  # set by an event

    # -- events (watchdog's thread) ---------------------------------------

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write"):
            return
        for path in (event.src_path, getattr(event, "dest_path", "")):
            entry = self._entry(os.fsdecode(path)) if path else None
            if entry is not None:
                with self._lock:
                    self._pending[entry] = time.monotonic()
                    self._moved.set()

    def _entry(self, path: str) -> str | None:
        """The top-level entry an event is about, unless it is to be ignored."""
        target = Path(path)
        if target == self.state_dir or self.state_dir in target.parents:
            return None
        try:
            parts = target.relative_to(self.root).parts
        except ValueError:
            return None
        if not parts or ignored(parts[0]) or ignored(parts[-1]):
            return None
        return parts[0]

    # -- reconciling (the watcher's own thread) ----------------------------

    def busy(self) -> tuple[frozenset[str], bool]:
        """Entries with an event in the last QUIET seconds, and whether any
        entry has just become quiet (then it is due a reconcile)."""
        now = time.monotonic()
        with self._lock:
            quiet = [e for e, t in self._pending.items() if now - t >= QUIET]
            for entry in quiet:
                del self._pending[entry]
            return frozenset(self._pending), bool(quiet)

    def run(self, holds: Callable[[], bool] = lambda: True) -> None:
        """Watch until ``holds`` says this process is no longer the watcher."""
        observer = Observer()
        observer.schedule(self, str(self.root), recursive=True)
        observer.start()
        log.info("watching %s (pid %d)", self.root, os.getpid())
        try:
            self._reconcile_until(holds)
        finally:
            observer.stop()

    def _reconcile_until(self, holds: Callable[[], bool]) -> None:
        next_scan = 0.0
        said = None  # a lasting fault (the state database gone) is logged once
        while holds():
            busy, settled = self.busy()
            if settled or time.monotonic() >= next_scan:
                try:
                    self.registry.reconcile(busy)
                    said = None
                except DepotError as e:  # the state folder's fault, reported by readiness
                    if e.message != said:
                        log.error("reconcile failed: %s", e.message)
                    said = e.message
                except Exception:  # a bad moment on disk must not end the watcher
                    log.exception("reconcile failed")
                if not settled:
                    next_scan = time.monotonic() + self.registry.settings.rescan_interval
            self._wait(next_scan)

    def _wait(self, next_scan: float) -> None:
        """Sleep until the first pending entry may be quiet, or, with none
        pending, until the next event; and never past the next rescan or
        :data:`HOLD_CHECK`. An idle watcher wakes once a second, not ten times."""
        with self._lock:
            first = min(self._pending.values(), default=None)
            self._moved.clear()
        now = time.monotonic()
        until = min(next_scan, now + HOLD_CHECK)
        if first is None:
            self._moved.wait(max(0.0, until - now))
        else:
            time.sleep(max(TICK, min(until, first + QUIET) - now))


def start_election(registry: Registry) -> None:
    """Start this worker's candidate thread: it becomes the deployment's
    watcher once the store says so (:meth:`~app.store.Store.become_watcher`),
    and watches for as long as it stays the watcher."""
    def candidate() -> None:
        said = None
        while True:
            try:
                holds = registry.store.become_watcher()
            except Exception as e:  # a read-only state folder: stand again later
                if str(e) != said:
                    log.error("cannot stand as the watcher: %s", getattr(e, "message", e))
                said = str(e)
                time.sleep(STAND_AGAIN)
                continue
            said = None
            try:
                registry.store.set_meta("watcher_pid", str(os.getpid()))
            except DepotError as e:  # GET /v2 will not name the watcher; it watches all the same
                log.error("could not record the watcher's pid: %s", e.message)
            Watcher(registry).run(holds)
            log.warning("no longer the deployment's watcher (its lock was lost); standing again")

    threading.Thread(target=candidate, name="depot-watcher", daemon=True).start()
