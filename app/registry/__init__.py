"""The registry: model versions -> state, shared by every worker; it
coordinates the store (the shared truth), this process's cache of runtimes
(:mod:`app.cache`), the published artifacts (:mod:`app.snapshots`) and the
models folder (:mod:`app.repository`).

The shared truth is a :class:`~app.store.Row` per model version in the store.
Every request checks its model's row against the worker's copy and, if the
generation moved, catches up (loads the new snapshot or drops the copy)
before serving. A background thread does the same eagerly, so the first
request after a load is not the one that pays for it.

Control-plane calls hold the model's cross-process lock, load and verify the
new copy in the calling worker, and only then publish the new generation. A
load or unload therefore holds for every worker when the call returns. The
lock is waited for DEPOT_LOCK_TIMEOUT seconds at most (then 409), so a loader
that hangs holds up only the calls for its own model.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator

import orjson

import runtimes

from . import repository, snapshots
from ..errors import (DepotError, InsufficientStorage, LoadFailed, ModelBusy, ModelNotFound,
                     StateUnavailable)
from .repository import NEW_ON_DISK, ModelFolder, ModelSpec
from ..settings import Settings
from . import cache
from .cache import RuntimeCache
from .catalog import LEASE_LAPSED, STARTED, Catalog, View
from .copies import NOT_SERVED_HERE, Copies, load_runtime
from .events import describe_error, event, label, log
from .snapshots import Snapshots
from ..store import LOADING, READY, UNAVAILABLE, Row, Store, open_store
from .sync import IDLE_SYNC_INTERVAL, SHARED_FROM, Sync, WorkerControl

CHANGED_ON_DISK = "changed on disk: call load to apply"
RELOAD_FAILED = "reload failed: "
LOAD_INTERRUPTED = "load interrupted: the loading process died; call load"
#: the lock a host's start-up holds (no model is named ""), and how long
#: another host waits for it
STARTING = ""
STARTUP_WAIT = 600.0



@dataclasses.dataclass
class _Prepared:
    """A version loaded and checked, not yet published; ``runtime`` is None
    when the gunicorn master holds the copy the workers will serve."""

    spec: ModelSpec
    stored: Row | None
    new: Row
    runtime: runtimes.Runtime | None


class Registry:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.snapshots = Snapshots(settings.state_dir / "snapshots")
        #: the models folder, read with the deployment's settings
        self.folder = ModelFolder.of(settings)
        copies = Copies(self.snapshots, self.folder)
        self.cache = RuntimeCache(copies.build)
        # Each part's methods are bound here as they are, with no call in
        # between: get_ready is the state check of every inference.
        catalog = Catalog(store, self.cache)
        self.view = catalog.view
        self.row = catalog.row
        self.get_ready = catalog.get_ready
        self.batch_limit = catalog.batch_limit
        self.index = catalog.index
        self.versions = catalog.versions
        self.stats_keys = catalog.stats_keys
        self.server_ready = catalog.server_ready
        self.unready_reason = catalog.unready_reason
        self.watcher_pid = catalog.watcher_pid
        self._sync = Sync(settings, catalog, self.cache, self.snapshots, copies)
        self.sync = self._sync.sync
        self.start_sync = self._sync.start_sync
        self.stage = self._sync.stage

    @classmethod
    def open(cls, settings: Settings) -> "Registry":
        return cls(settings, open_store(settings))

    @property
    def master(self) -> WorkerControl | None:
        """The gunicorn master (app/registry/master.py), in it and in its
        workers; None where there is none. Set once the master starts."""
        return self._sync.master

    @master.setter
    def master(self, master: WorkerControl | None) -> None:
        self._sync.master = master

    @property
    def retiring(self) -> bool:
        """Set in a worker that is stopping: its sync builds no new copies."""
        return self._sync.retiring

    @retiring.setter
    def retiring(self, retiring: bool) -> None:
        self._sync.retiring = retiring

    # -- control plane ------------------------------------------------------

    def startup(self) -> None:
        """Start this host. The first host of a new deployment (no state,
        an older Depot's, or one whose first start never finished) starts
        from the disk: it registers every model found and, when
        configured, loads it. Every other start adopts the deployment's
        state (:meth:`_adopt`): a restart or a new host keeps what was
        loaded and what was unloaded, and what changed on disk meanwhile
        waits for a load. Hosts that start together take turns, so the
        second never resets what the first has begun. Runs once, in the
        gunicorn master, so the loaded copies are shared with the workers
        it forks."""
        if not self.settings.models.is_dir():
            raise FileNotFoundError(f"DEPOT_MODELS: no such folder: {self.settings.models}")
        try:
            with self.store.lock(STARTING, timeout=STARTUP_WAIT):
                self._start()
        except ModelBusy:
            raise StateUnavailable(f"another host has been starting this deployment for "
                                   f"{STARTUP_WAIT:g} s; is it stuck?") from None

    def _start(self) -> None:
        fresh = self.store.is_fresh() or not self.server_ready()
        if fresh:
            self.store.reset()
            self.snapshots.clear()
        else:
            self._adopt()
        self.reconcile()
        if fresh and self.settings.load_at_startup:
            for name in sorted({row.name for row in self.store.rows()}):
                try:
                    self.load(name)
                except (LoadFailed, ModelNotFound) as e:
                    log.warning("%s", e.message)
        self.store.set_meta(STARTED, "1")

    def _adopt(self) -> None:
        """Take over the state the deployment has: a READY row is loaded
        again from its snapshot, the copy it served, never from the models
        folder; a LOADING row whose model's lock is free lost its loader
        (one that another host still runs holds the lock and is left to
        finish). Snapshot folders that no READY row serves from (partial
        copies, old generations) are removed."""
        keep: set[Path] = set()
        for row in self.store.rows():
            if row.state == READY and self._sync.restore(row):
                keep.add(self.snapshots.path(row).parent)
            elif row.state == LOADING:
                self._unless_busy(self._repair_loading, row.name, row.version)
        self.snapshots.keep_only(keep)

    def _repair_loading(self, name: str, version: str) -> None:
        with self.store.lock(name):
            row = self.store.get(name, version)
            if row is not None and row.state == LOADING:
                self._repair(row)

    def reconcile(self, busy: frozenset[str] = frozenset()) -> None:
        """Bring the registry in line with the disk: register what is new
        or changed, forget what is gone. Top-level entries named in ``busy``
        are still being written and are left as they are."""
        specs = self.folder.scan()
        on_disk = {(s.name, s.version) for s in specs}
        for spec in specs:
            if spec.source.name not in busy:
                self._unless_busy(self.register, spec)
        for row in self.store.rows():
            if (row.name, row.version) not in on_disk and Path(row.source).name not in busy:
                self._unless_busy(self.forget, row.name, row.version)

    @contextlib.contextmanager
    def _applied(self) -> Iterator[None]:
        """After the body's writes, wait until every process of the
        deployment has applied them (a shared store's hosts; nothing to wait
        for on one host). An error of the body is the call's answer."""
        try:
            yield
        finally:
            try:
                self.store.wait_applied()
            except DepotError as e:
                log.warning("could not confirm that every host applied the change: %s",
                            e.message)

    @staticmethod
    def _unless_busy(call: Callable[..., None], *args: Any) -> None:
        """A model whose lock another call holds past the deadline is left
        for the next rescan, and the others are reconciled meanwhile."""
        try:
            call(*args)
        except ModelBusy as e:
            log.info("%s; left for the next rescan", e.message)

    def register(self, spec: ModelSpec) -> None:
        """Record a model version as the disk describes it. A READY one keeps
        serving what it loaded; its reason says when the disk has moved on."""
        with self.store.lock(spec.name):
            if not spec.source.exists() and not spec.source.is_symlink():
                return  # removed since the scan: forget() will follow (a broken link stays)
            row = self.store.get(spec.name, spec.version)
            mark = repository.fingerprint(spec)
            duplicate = bool(spec.error and spec.error.startswith(repository.DUPLICATE))
            level = logging.WARNING if duplicate else logging.INFO
            if row is None:
                new = self.folder.row(spec).replace(fingerprint=mark)
                self.store.put(new)
                event("register", spec.name, spec.version, new.reason, level)
            elif row.state == READY:
                reason = "" if mark == row.fingerprint else CHANGED_ON_DISK
                if reason and row.reason.startswith(RELOAD_FAILED):
                    reason = row.reason  # says more: the change was tried and failed
                if row.reason != reason:
                    self.store.put(row.replace(reason=reason))
                    event("change", spec.name, spec.version, reason or "disk matches the loaded copy")
            elif row.state == LOADING:
                self._repair(row)
            elif mark != row.fingerprint:
                if spec.error:
                    reason = f"cannot load: {spec.error}"
                elif row.reason in (NEW_ON_DISK, "unloaded"):
                    reason = row.reason
                else:
                    reason = CHANGED_ON_DISK
                self.store.put(self.folder.row(spec, row).replace(
                    reason=reason, fingerprint=mark, details=repository.details(spec)))
                event("change", spec.name, spec.version, reason, level)

    def forget(self, name: str, version: str) -> None:
        """A model version gone from the disk leaves the index; every worker
        drops its copy, and requests for it are 404 from then on."""
        with self.store.lock(name):
            back = any(spec.version == version for spec in self.folder.find(name))
            if not back and self.store.get(name, version) is not None:
                self._forget(name, version)
                event("remove", name, version, "gone from the repository")

    def load(self, name: str) -> list[Row]:
        """Load (or reload) every version of a model from the disk. All are
        tried; if any fails, the call fails with every reason. It returns
        once every process of the deployment has applied the outcome."""
        with self.store.lock(name), self._applied():
            specs = self.folder.find(name)
            on_disk = {spec.version for spec in specs}
            for row in self._rows_of(name):
                if row.version not in on_disk:
                    self._forget(row.name, row.version)
                else:
                    self._repair(row)
            if not specs:
                raise ModelNotFound(f"model {name!r} is not in the repository")
            prepared, failures = [], []
            for spec in specs:
                stored = self.store.get(spec.name, spec.version)
                try:
                    with self._loading(spec, stored):
                        prepared.append(self._prepare(spec, stored))
                except LoadFailed as e:
                    failures.append(e.message)
            if any(ready.runtime is None for ready in prepared):
                self._replace_workers()
            loaded = []
            for ready in prepared:
                try:
                    with self._loading(ready.spec, ready.stored):
                        loaded.append(self._commit(ready))
                except LoadFailed as e:
                    failures.append(e.message)
            if failures:
                raise LoadFailed("; ".join(failures))
            return loaded

    def unload(self, name: str) -> list[Row]:
        """Unload every version of a model; it returns once no process of
        the deployment serves it."""
        with self.store.lock(name), self._applied():
            rows = self._rows_of(name) or [self.folder.row(s) for s in self.folder.find(name)]
            if not rows:
                raise ModelNotFound(f"model {name!r} is not in the repository")
            unloaded = []
            for row in rows:
                new = row.replace(state=UNAVAILABLE, reason="unloaded", snapshot=None, digest="",
                                  generation=row.generation + 1)
                self.store.put(new)
                self.cache.drop((row.name, row.version))
                self.snapshots.discard(row.name, row.version, keep=None)
                unloaded.append(new)
                event("unload", row.name, row.version, "unloaded")
            return unloaded

    # -- loading ------------------------------------------------------------

    @contextlib.contextmanager
    def _loading(self, spec: ModelSpec, stored: Row | None) -> Iterator[None]:
        """A step of loading one version, called with the model's lock held:
        its failure is recorded in the row and fails the call, with 507
        (full) or 503 (read-only, unreachable) when the state store refused
        a write, else 400 (the model's fault)."""
        try:
            yield
        except (Exception, SystemExit) as e:  # a pickle may call exit()
            refused = self.store.refused(e)
            message = refused.message if refused else describe_error(e)
            self._publish_failure(spec, stored or self.folder.row(spec), message)
            text = f"load failed for model {label(spec.name, spec.version)}: {message}"
            raise (type(refused) if refused else LoadFailed)(text) from None

    def _prepare(self, spec: ModelSpec, stored: Row | None) -> "_Prepared":
        """Copy one version's artifact to a snapshot, load and verify it
        here, and, in a gunicorn worker, have the master stage its own copy
        (app/registry/master.py). The copy comes before the row says LOADING, and a
        failure removes the snapshot it began: a state folder too full for
        the copy leaves the row as it was, and no half-written copy stays."""
        if spec.error:
            raise LoadFailed(spec.error)
        assert spec.artifact is not None
        mark = repository.fingerprint(spec)  # before the copy: a later write shows as a change
        row = self.folder.row(spec, stored)
        generation = row.generation + 1
        runtime = None
        try:
            artifact, digest = self.snapshots.copy(spec.name, spec.version, generation,
                                                   spec.artifact)
            if row.state != READY:
                self.store.put(row.replace(state=LOADING, reason="loading"))
            details = repository.details(spec)
            runtime = load_runtime((spec.name, spec.version), spec.runtime, artifact, details)
            if not spec.inputs or not spec.outputs:
                declared = orjson.loads(details)
                found = runtime.metadata()
                declared["inputs"] = spec.inputs or found["inputs"]
                declared["outputs"] = spec.outputs or found["outputs"]
                details = orjson.dumps(declared).decode()
            new = row.replace(state=READY, reason="", generation=generation,
                              snapshot=artifact.name, digest=digest, details=details,
                              fingerprint=mark)
            if self._shares_copies() and snapshots.size(artifact) >= SHARED_FROM:
                # It proved the artifact loads; the master's copy serves. Let
                # it go first, so the host holds one new copy at a time.
                cache.release(runtime)
                runtime = None
                cache.trim()
                self.master.stage(new)
        except BaseException:
            self.snapshots.remove(spec.name, spec.version, generation)
            if runtime is not None:
                runtime.unload()
            raise
        return _Prepared(spec, stored, new, runtime)

    def _commit(self, ready: "_Prepared") -> Row:
        """Publish a prepared version: from now on every process serves it."""
        new = ready.new
        try:
            self.store.put(new)
        except BaseException:
            self.snapshots.remove(new.name, new.version, new.generation)
            if ready.runtime is not None:
                ready.runtime.unload()
            raise
        if ready.runtime is not None:
            self.cache.put((new.name, new.version), new.generation, ready.runtime)
        self.snapshots.discard(new.name, new.version, keep=new.generation)
        event("load", new.name, new.version, f"generation {new.generation}")
        return new

    def _shares_copies(self) -> bool:
        """Whether this process is a gunicorn worker whose master holds the
        copies the workers share (app/registry/master.py)."""
        return self.master is not None and self.master.in_worker()

    def _replace_workers(self) -> None:
        """Have the master replace every worker by a fork that shares its
        staged copies. If it cannot, the workers build their own copies,
        as they would without it: the load holds all the same."""
        try:
            self.master.replace_workers()
        except DepotError as e:
            log.warning("the workers were not replaced (%s); each builds its own copy",
                        e.message)

    def _publish_failure(self, spec: ModelSpec, row: Row, message: str) -> None:
        """Record why a load failed. When the state folder refuses even
        that write, the log says why and the row keeps what the last write
        left; if that is LOADING, the next call to hold the lock repairs it."""
        current = self.store.get(spec.name, spec.version) or row
        if current.state == READY:
            reason = f"{RELOAD_FAILED}{message}; serving the previous copy"
            failed = current.replace(reason=reason)
        else:
            failed = current.replace(state=UNAVAILABLE, reason=f"load failed: {message}")
        try:
            self.store.put(failed)
        except (InsufficientStorage, StateUnavailable) as e:
            log.warning("could not record that %s failed to load: %s",
                        label(spec.name, spec.version), e.message)
        event("fail", spec.name, spec.version, message, logging.WARNING)

    # -- helpers ------------------------------------------------------------

    def _rows_of(self, name: str) -> list[Row]:
        return [row for row in self.store.rows() if row.name == name]

    def _repair(self, row: Row) -> None:
        """Undo what a dead loader left. Called with the model's lock held,
        so no load of it is at work: a LOADING row lost its loader, and a
        snapshot folder other than the one a READY row serves is a partial
        copy (or an old generation)."""
        if row.state == LOADING:
            row = row.replace(state=UNAVAILABLE, reason=LOAD_INTERRUPTED, snapshot=None)
            self.store.put(row)
            event("fail", row.name, row.version, LOAD_INTERRUPTED, logging.WARNING)
        self.snapshots.discard(row.name, row.version,
                                keep=row.generation if row.state == READY else None)

    def _forget(self, name: str, version: str) -> None:
        self.store.delete(name, version)
        self.cache.drop((name, version))
        self.snapshots.discard(name, version, keep=None)
