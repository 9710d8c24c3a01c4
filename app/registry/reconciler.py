"""Start-up, adoption of a deployment's state, and the disk brought in line with the store.

The first host of a new deployment starts from the disk: it registers every
model found and, when configured, loads it. Every other start adopts the
deployment's state, which outlives its processes: a restart or a new host
keeps what was loaded and what was unloaded, serves the copies the loads
published, and what changed on disk meanwhile waits for a load.

After start-up the watcher (app/registry/watcher.py) calls :meth:`Reconciler.reconcile`
whenever the models folder has moved: a new model version is registered
UNAVAILABLE (:data:`~app.registry.repository.NEW_ON_DISK`), a changed one
keeps serving what it loaded and says so (:data:`CHANGED_ON_DISK`), and one
gone from the disk leaves the index.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import LoadFailed, ModelBusy, ModelNotFound, StateUnavailable
from ..store import LOADING, READY, Store
from . import repository
from .catalog import STARTED, Catalog
from .events import event, log
from .loader import RELOAD_FAILED, Loader
from .repository import NEW_ON_DISK, ModelFolder, ModelSpec

if TYPE_CHECKING:
    from ..settings import Settings
    from .snapshots import Snapshots
    from .sync import Sync

CHANGED_ON_DISK = "changed on disk: call load to apply"
#: the lock a host's start-up holds (no model is named ""), and how long
#: another host waits for it
STARTING = ""
STARTUP_WAIT = 600.0


@dataclass(frozen=True)
class Reconciler:
    """Starts this host on the deployment's state, and keeps the store in
    line with the models folder."""

    settings: Settings
    store: Store
    snapshots: Snapshots
    folder: ModelFolder
    catalog: Catalog
    loader: Loader
    #: this process's copies: a start that adopts the state restores them
    sync: Sync

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
        fresh = self.store.is_fresh() or not self.catalog.server_ready()
        if fresh:
            self.store.reset()
            self.snapshots.clear()
        else:
            self._adopt()
        self.reconcile()
        if fresh and self.settings.load_at_startup:
            for name in sorted({row.name for row in self.store.rows()}):
                try:
                    self.loader.load(name)
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
            if row.state == READY and self.sync.restore(row):
                keep.add(self.snapshots.path(row).parent)
            elif row.state == LOADING:
                self._unless_busy(self._repair_loading, row.name, row.version)
        self.snapshots.keep_only(keep)

    def _repair_loading(self, name: str, version: str) -> None:
        with self.store.lock(name):
            row = self.store.get(name, version)
            if row is not None and row.state == LOADING:
                self.loader.repair(row)

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
                self.loader.repair(row)
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
                self.loader.remove(name, version)
                event("remove", name, version, "gone from the repository")
