"""This process's loaded runtimes, each tagged with the generation of the
row it was built from, and the generations it could not build.

Every worker has its own memory, so each keeps its own copies; the store's
generation says when a copy is stale. A request that finds its copy stale
builds the new one (:meth:`RuntimeCache.catch_up`) before it serves; a
background thread of the registry does the same eagerly. A build that
fails is not tried again for :data:`RETRY_AFTER` seconds (a 2 GB model is
not reloaded on every request): the copy is refused meanwhile, with the
reason, and the index of this host says so.

A copy may also be *staged*: built (in the gunicorn master) for a generation
that is not published yet, so that the workers forked next inherit it and
serve it, without building their own, once it is. A staged copy that is not
published within :data:`STAGED_FOR` seconds was abandoned and is dropped.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from typing import Callable

import runtimes

from ..store import Row

Key = tuple[str, str]  # (name, version); version "" when the model has none

#: seconds before a generation that failed to build is tried again
RETRY_AFTER = 10.0
#: seconds a staged copy waits for its generation to be published
STAGED_FOR = 120.0


class Refused(Exception):
    """This process cannot serve a generation; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RuntimeCache:
    def __init__(self, build: Callable[[Row], runtimes.Runtime]) -> None:
        self._build = build
        self._copies: dict[Key, tuple[int, runtimes.Runtime]] = {}
        self._lock = threading.Lock()  # held only to update the dicts, never to build
        self._building: dict[Key, threading.Lock] = {}  # one build of a key at a time
        self._refused: dict[Key, tuple[int, float, str]] = {}  # generation, until, reason
        #: how many copies this process has built (not staged, not inherited)
        self.builds = 0
        #: copies built for a generation not yet published: generation, copy, until
        self._staged: dict[Key, tuple[int, runtimes.Runtime, float]] = {}
        # A fork taken while another thread held a lock must not inherit it held.
        os.register_at_fork(after_in_child=self._after_fork)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()
        self._building = {}

    def __contains__(self, key_: Key) -> bool:
        return key_ in self._copies

    def keys(self) -> list[Key]:
        return list(self._copies)

    def generation(self, key_: Key) -> int | None:
        found = self._copies.get(key_)
        return found[0] if found else None

    def get(self, key_: Key, generation: int) -> runtimes.Runtime | None:
        """The copy of that generation, if this process has it (a staged one
        of that generation is served from now on)."""
        found = self._copies.get(key_)
        if found is not None and found[0] == generation:
            return found[1]
        staged = self._staged.get(key_)
        if staged is not None and staged[0] == generation:
            self.put(key_, generation, staged[1])
            return staged[1]
        return None

    def stage(self, key_: Key, generation: int, runtime: runtimes.Runtime) -> None:
        """Keep ``runtime`` for that generation until it is published."""
        with self._lock:
            old = self._staged.get(key_)
            self._staged[key_] = (generation, runtime, time.monotonic() + STAGED_FOR)
        if old is not None and old[1] is not runtime:
            release(old[1])

    def expire_staged(self, generations: dict[Key, int]) -> None:
        """Drop the staged copies that will never be served: their model is
        not READY or LOADING now (not in ``generations``), its generation is
        past theirs, or they waited too long for it."""
        now = time.monotonic()
        for key_, (generation, runtime, until) in list(self._staged.items()):
            published = generations.get(key_)
            if published is not None and published == generation:
                continue  # served from the next request on
            if published is None or published > generation or now > until:
                with self._lock:
                    if self._staged.get(key_, (None,))[0] == generation:
                        del self._staged[key_]
                if self.generation(key_) != generation:
                    release(runtime)

    def refusal(self, key_: Key, generation: int) -> str | None:
        """Why this process does not serve that generation, if it tried and
        failed in the last :data:`RETRY_AFTER` seconds."""
        found = self._refused.get(key_)
        if found is not None and found[0] == generation and time.monotonic() < found[1]:
            return found[2]
        return None

    def refuse(self, key_: Key, generation: int, reason: str) -> None:
        self._refused[key_] = (generation, time.monotonic() + RETRY_AFTER, reason)

    def catch_up(self, row: Row) -> runtimes.Runtime:
        """This process's copy of a row's generation, built if need be.
        Building can take seconds, so it holds only that key's lock (two
        threads never build the same copy twice): requests and control
        calls of other models go on. Raises :class:`Refused` when the build
        fails, or failed lately."""
        key_ = (row.name, row.version)
        with self._lock:
            building = self._building.setdefault(key_, threading.Lock())
        with building:
            runtime = self.get(key_, row.generation)
            if runtime is None:
                reason = self.refusal(key_, row.generation)
                if reason is not None:
                    raise Refused(reason)
                try:
                    self.builds += 1
                    runtime = self._build(row)
                except Refused as e:
                    self.refuse(key_, row.generation, e.reason)
                    raise
                self._refused.pop(key_, None)
                self.put(key_, row.generation, runtime)
            return runtime

    def put(self, key_: Key, generation: int, runtime: runtimes.Runtime) -> None:
        """Serve ``runtime`` from now on; the copy it replaces is unloaded."""
        with self._lock:
            old = self._copies.get(key_)
            self._copies[key_] = (generation, runtime)
            if self._staged.get(key_, (None,))[0] == generation:
                del self._staged[key_]
        if old is not None and old[1] is not runtime:
            release(old[1])

    def drop(self, key_: Key) -> None:
        """Stop serving a model's copy. A staged copy stays: it is for a
        generation not published yet (a load in progress, while the row
        still says LOADING and this process may still hold the last one),
        and :meth:`expire_staged` drops it once it will never be served."""
        if key_ not in self._copies:
            return
        with self._lock:
            old = self._copies.pop(key_, None)
        if old is not None:
            release(old[1])


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


_LIBC = _libc()


def release(runtime: runtimes.Runtime) -> None:
    """Unload a copy; its memory goes back at the next :func:`trim`."""
    global _trim_due
    runtime.unload()
    _trim_due = True


_trim_due = False


def trim(force: bool = False) -> None:
    """Give the memory of the copies let go since the last call back to the
    system. glibc keeps freed memory for reuse, and once a large block has
    been freed it takes later large blocks from the heap, where freeing does
    not return them: a replaced copy would stay in every process, private to
    each. ``malloc_trim`` returns every free page. Called where no reference
    to a released copy is left (the registry's sync, between passes), and
    (``force``) in the master before it forks: free pages a fork inherits
    would be copied, not shared, once the master writes to them again."""
    global _trim_due
    if (_trim_due or force) and _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _trim_due = False
        _LIBC.malloc_trim(0)
