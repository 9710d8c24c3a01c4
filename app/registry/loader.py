"""Load and unload: the control calls that publish a model version's new generation.

Control-plane calls hold the model's cross-process lock, load and verify the
new copy in the calling worker, and only then publish the new generation. A
load or unload therefore holds for every worker when the call returns. The
lock is waited for DEPOT_LOCK_TIMEOUT seconds at most (then 409), so a loader
that hangs holds up only the calls for its own model.

A load first copies the artifact to a snapshot of the new generation
(:mod:`.snapshots`), which every process then serves; a reload that fails
keeps the previous copy serving (:data:`RELOAD_FAILED`). In a gunicorn
worker, a large model's copy is staged by the master, which then replaces
its workers by forks that share it (app/registry/master.py), before the
generation is published. A loader that dies leaves a LOADING row and a
partial snapshot behind; the next call to hold the model's lock repairs
both (:meth:`Loader.repair`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Iterator

import orjson

import runtimes

from ..errors import DepotError, InsufficientStorage, LoadFailed, ModelNotFound, StateUnavailable
from ..store import LOADING, READY, UNAVAILABLE, Row, Store
from . import repository
from .cache import RuntimeCache, release, trim
from .copies import load_runtime
from .events import describe_error, event, label, log
from .repository import ModelFolder, ModelSpec
from .snapshots import Snapshots, size
from .sync import SHARED_FROM, WorkerControl

RELOAD_FAILED = "reload failed: "
LOAD_INTERRUPTED = "load interrupted: the loading process died; call load"


@dataclasses.dataclass
class _Prepared:
    """A version loaded and checked, not yet published; ``runtime`` is None
    when the gunicorn master holds the copy the workers will serve."""

    spec: ModelSpec
    stored: Row | None
    new: Row
    runtime: runtimes.Runtime | None


class Loader:
    """Loads and unloads every version of a model, for every process of the
    deployment."""

    def __init__(self, store: Store, cache: RuntimeCache, snapshots: Snapshots,
                 folder: ModelFolder) -> None:
        self.store = store
        self.cache = cache
        self.snapshots = snapshots
        self.folder = folder
        #: the gunicorn master, in it and in its workers
        self.master: WorkerControl | None = None

    def load(self, name: str) -> list[Row]:
        """Load (or reload) every version of a model from the disk. All are
        tried; if any fails, the call fails with every reason. It returns
        once every process of the deployment has applied the outcome."""
        with self.store.lock(name), self._applied():
            specs = self.folder.find(name)
            on_disk = {spec.version for spec in specs}
            for row in self._rows_of(name):
                if row.version not in on_disk:
                    self.remove(row.name, row.version)
                else:
                    self.repair(row)
            if not specs:
                raise ModelNotFound(name)
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
                raise ModelNotFound(name)
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

    def repair(self, row: Row) -> None:
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

    def remove(self, name: str, version: str) -> None:
        """Drop a model version from the store, this process's cache and
        this host's snapshots; called with the model's lock held."""
        self.store.delete(name, version)
        self.cache.drop((name, version))
        self.snapshots.discard(name, version, keep=None)

    def _rows_of(self, name: str) -> list[Row]:
        return [row for row in self.store.rows() if row.name == name]

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

    def _prepare(self, spec: ModelSpec, stored: Row | None) -> _Prepared:
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
            # In a gunicorn worker, whose master holds the copies the workers share:
            master = self.master
            if master is not None and master.in_worker() and size(artifact) >= SHARED_FROM:
                # It proved the artifact loads; the master's copy serves. Let
                # it go first, so the host holds one new copy at a time.
                release(runtime)
                runtime = None
                trim()
                master.stage(new)
        except BaseException:
            self.snapshots.remove(spec.name, spec.version, generation)
            if runtime is not None:
                runtime.unload()
            raise
        return _Prepared(spec, stored, new, runtime)

    def _commit(self, ready: _Prepared) -> Row:
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

    def _replace_workers(self) -> None:
        """Have the master replace every worker by a fork that shares its
        staged copies. If it cannot, the workers build their own copies,
        as they would without it: the load holds all the same."""
        assert self.master is not None  # only a worker's load leaves a copy to the master
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
