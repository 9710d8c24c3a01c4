"""The registry: model versions -> state, shared by every worker, behind one face.

The shared truth is a :class:`~app.store.Row` per model version in the store
(SQLite on one host, PostgreSQL for several). Each process keeps its own
copies of the models it serves (:mod:`.cache`), each tagged with the
generation of the row it was built from, and brings them in line with the
store before it serves, so a load or unload holds for every process once
the call returns.

Five jobs, one part each, over one store, one cache, one snapshot folder
(:mod:`.snapshots`) and one models folder (:class:`~.repository.ModelFolder`):

* :mod:`.catalog`, the read side: the per-request state check, the index,
  versions, readiness;
* :mod:`.loader`, load and unload;
* :mod:`.reconciler`, start-up, adoption of a deployment's state, and the
  disk brought in line with the store;
* :mod:`.sync`, this process's copies following the store, and the
  gunicorn master's staging (:mod:`.master`); :mod:`.copies` builds them;
* :mod:`.repository`, what the models folder holds.

:class:`Registry` builds the parts and keeps the one API the rest of Depot
uses. It binds the parts' methods onto itself rather than wrapping them:
``get_ready`` is on the path of every inference, where a forwarding call
would cost.
"""
from __future__ import annotations

from ..settings import Settings
from ..store import Store, open_store
from .cache import RuntimeCache
from .catalog import LEASE_LAPSED, Catalog, View
from .copies import NOT_SERVED_HERE, Copies
from .loader import LOAD_INTERRUPTED, RELOAD_FAILED, Loader
from .reconciler import CHANGED_ON_DISK, STARTING, STARTUP_WAIT, Reconciler
from .repository import NEW_ON_DISK, ModelFolder
from .snapshots import Snapshots
from .sync import IDLE_SYNC_INTERVAL, SHARED_FROM, Sync, WorkerControl

__all__ = ["CHANGED_ON_DISK", "IDLE_SYNC_INTERVAL", "LEASE_LAPSED", "LOAD_INTERRUPTED",
           "NEW_ON_DISK", "NOT_SERVED_HERE", "RELOAD_FAILED", "SHARED_FROM", "STARTING",
           "STARTUP_WAIT", "Registry", "View", "WorkerControl"]


class Registry:
    """The model registry as this process sees it: the parts, built over
    one store, and the methods the web layer, the gunicorn hooks and the
    watcher call on them."""

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
        #: the read side, for callers on the hot path: a method of its class
        #: is found faster than one bound onto this instance
        self.catalog = catalog = Catalog(store, self.cache)
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
        self._loader = Loader(store, self.cache, self.snapshots, self.folder)
        self.load = self._loader.load
        self.unload = self._loader.unload
        self._sync = Sync(settings, catalog, self.cache, self.snapshots, copies)
        self.sync = self._sync.sync
        self.start_sync = self._sync.start_sync
        self.stage = self._sync.stage
        reconciler = Reconciler(settings, store, self.snapshots, self.folder, catalog,
                                self._loader, self._sync)
        self.startup = reconciler.startup
        self.reconcile = reconciler.reconcile
        self.register = reconciler.register
        self.forget = reconciler.forget

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
        self._loader.master = self._sync.master = master

    @property
    def retiring(self) -> bool:
        """Set in a worker that is stopping: its sync builds no new copies."""
        return self._sync.retiring

    @retiring.setter
    def retiring(self, retiring: bool) -> None:
        self._sync.retiring = retiring
