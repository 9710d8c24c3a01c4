"""This process's loaded runtimes, each tagged with the generation of the
row it was built from, and the generations it could not build.

Every worker has its own memory, so each keeps its own copies; the store's
generation says when a copy is stale. A request that finds its copy stale
builds the new one (:meth:`RuntimeCache.catch_up`) before it serves; a
background thread of the registry does the same eagerly. A build that
fails is not tried again for :data:`RETRY_AFTER` seconds (a 2 GB model is
not reloaded on every request): the copy is refused meanwhile, with the
reason, and the index of this host says so.
"""
from __future__ import annotations

import threading
import time
from typing import Callable

import runtimes

from .store import Row

Key = tuple[str, str]  # (name, version); version "" when the model has none

#: seconds before a generation that failed to build is tried again
RETRY_AFTER = 10.0


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

    def __contains__(self, key_: Key) -> bool:
        return key_ in self._copies

    def keys(self) -> list[Key]:
        return list(self._copies)

    def generation(self, key_: Key) -> int | None:
        found = self._copies.get(key_)
        return found[0] if found else None

    def get(self, key_: Key, generation: int) -> runtimes.Runtime | None:
        """The copy of that generation, if this process has it."""
        found = self._copies.get(key_)
        return found[1] if found is not None and found[0] == generation else None

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
        if old is not None and old[1] is not runtime:
            old[1].unload()

    def drop(self, key_: Key) -> None:
        if key_ not in self._copies:
            return
        with self._lock:
            old = self._copies.pop(key_, None)
        if old is not None:
            old[1].unload()
