"""The registry's read side: the per-request state check, the index, versions, readiness.

The shared truth is a :class:`~app.store.Row` per model version in the store.
Every request checks its model's row against the worker's copy and, if the
generation moved, catches up (loads the new snapshot or drops the copy)
before serving: :meth:`Catalog.get_ready`, the one state read on the path of
every inference. It reads the store's change mark (a local read) and
re-reads the rows only when the mark has moved, so a state that stays still
costs a dictionary lookup or two.

Nothing here writes the store: loads and unloads (:mod:`.loader`) and
start-up (:mod:`.reconciler`) do, and this side sees what they published.
"""
from __future__ import annotations

import orjson

import runtimes

from ..errors import DepotError, ModelChanging, ModelNotFound, ModelNotReady, StateUnavailable
from ..store import READY, UNAVAILABLE, Row, Store
from .cache import Key, Refused, RuntimeCache
from .repository import version_key

LEASE_LAPSED = ("this host has lost touch with the deployment's state store for longer than "
                "DEPOT_LEASE_SECONDS; it serves again once it is back")
#: the store's meta key that says start-up is done (:mod:`.reconciler` sets it)
STARTED = "started"


class View:
    """What a worker knows of the store at one change mark: every row by
    key, and each model's versions newest first."""

    def __init__(self, mark: int, rows: list[Row]) -> None:
        self.mark = mark
        self.rows: dict[Key, Row] = {(r.name, r.version): r for r in rows}
        self.versions: dict[str, list[Row]] = {}
        for row in sorted(rows, key=lambda r: version_key(r.version), reverse=True):
            self.versions.setdefault(row.name, []).append(row)


class Catalog:
    """The store as this process reads it, and this process's copies as
    requests are served from them."""

    def __init__(self, store: Store, cache: RuntimeCache) -> None:
        self.store = store
        self.cache = cache
        #: the view the last :meth:`view` made (the sync's pace follows its mark)
        self.seen = View(-1, [])

    def view(self) -> View:
        """The store as it is now. The change mark is read first, so rows
        read after it are at least as new as the mark says."""
        mark = self.store.change_mark()
        seen = self.seen
        if mark != seen.mark:
            seen = self.seen = View(mark, self.store.rows_as_of(mark))
        return seen

    def row(self, name: str, version: str | None = None, fresh: bool = False) -> Row:
        """One version's row; without a version, the newest READY one (else
        the newest), as Triton's default version policy serves."""
        view = View(0, self.store.rows()) if fresh else self.view()
        rows = view.versions.get(name)
        if not rows:
            raise ModelNotFound(name)
        if version is None:
            for row in rows:  # a loop: a generator costs a microsecond a request
                if row.state == READY:
                    return row
            return rows[0]
        row = view.rows.get((name, version))
        if row is None:
            raise ModelNotFound(name, version)
        return row

    def get_ready(self, name: str, version: str | None = None) -> tuple[Row, runtimes.Runtime]:
        """The row and this worker's runtime for a model version, brought in
        line with the shared generation: the one state check of an inference."""
        if not self.store.vouches():
            raise StateUnavailable(LEASE_LAPSED)
        row = self.row(name, version)
        for _ in range(3):
            if row.state != READY:
                self.cache.drop((row.name, row.version))
                raise ModelNotReady(name, row.version, row.state, row.reason)
            runtime = self.cache.get((row.name, row.version), row.generation)
            if runtime is not None:
                return row, runtime
            try:
                return row, self.cache.catch_up(row)
            except Refused as e:
                # A load or unload may have replaced that generation's
                # snapshot while we read it: if so, serve what holds now.
                newer = self.row(name, version, fresh=True)
                if (newer.version, newer.generation) == (row.version, row.generation):
                    raise ModelNotReady(name, row.version, UNAVAILABLE, e.reason) from None
                row = newer
        raise ModelChanging(name)

    def batch_limit(self, name: str, version: str | None = None) -> int:
        """The model's ``max_batch_size`` if it is READY (app/v2/batching.py),
        else 0; never raises."""
        try:
            row = self.row(name, version)
        except DepotError:
            return 0
        if row.state != READY:
            return 0
        return orjson.loads(row.details).get("max_batch_size") or 0

    def index(self, ready_only: bool = False) -> list[Row]:
        """Every model version's row, by name and version, read from the
        store (a 503 rather than the rows of a database that is no longer
        the deployment's), as this host serves it: a READY model whose
        loaded copy this host cannot serve is UNAVAILABLE here, with why."""
        self.store.check_identity()
        rows = sorted(map(self._as_served, self.store.rows()),
                      key=lambda r: (r.name, version_key(r.version)))
        return [r for r in rows if r.state == READY] if ready_only else rows

    def _as_served(self, row: Row) -> Row:
        refused = self.cache.refusal((row.name, row.version), row.generation)
        if row.state != READY or refused is None:
            return row
        return row.replace(state=UNAVAILABLE, reason=refused)

    def versions(self, name: str) -> list[str]:
        """A model's named versions, oldest first."""
        found = [r.version for r in self.view().versions.get(name, []) if r.version]
        return sorted(found, key=version_key)

    def stats_keys(self, name: str | None, version: str | None) -> list[Key]:
        """The (name, version) pairs a statistics request covers: every
        version of every model, of one model, or one version (404 if unknown)."""
        view = self.view()
        if name is None:
            return sorted(view.rows)
        if version is not None:
            self.row(name, version)
            return [(name, version)]
        rows = view.versions.get(name)
        if not rows:
            raise ModelNotFound(name)
        return sorted((r.name, r.version) for r in rows)

    def server_ready(self) -> bool:
        """Whether start-up (registering and loading the models found) is done."""
        return self.store.get_meta(STARTED) == "1"

    def unready_reason(self) -> str | None:
        """Why readiness says no, or None: start-up loading is not done, or
        the state folder cannot take writes (full, read-only, its database
        deleted or replaced). Loaded models serve on in every case; the
        reason says what to mend before control calls can work again."""
        problem = self.store.health()
        if problem is None and not self.store.vouches():
            problem = LEASE_LAPSED
        if problem is None and not self.server_ready():
            problem = "starting up: models are loading"
        return problem

    def watcher_pid(self) -> int | None:
        """The process that watches the models folder, if one does."""
        pid = self.store.get_meta("watcher_pid")
        return int(pid) if pid else None
