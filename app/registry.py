"""The registry: model name -> state, shared by every worker, plus this
worker's cache of loaded runtimes kept in line with it.

The shared truth is a :class:`~app.store.Row` per model in the store. Each
worker keeps ``{name: (generation, runtime)}``; every request reads its
model's row once and, if the generation moved, catches up (loads the new
snapshot or drops the copy) before serving. A background thread does the same
eagerly, so the first request after a load is not the one that pays for it.

Control-plane calls hold the model's cross-process lock, load and verify the
new copy in the calling worker, and only then publish the new generation. A
load or unload therefore holds for every worker when the call returns.
"""
from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import orjson

import runtimes

from . import repository
from .errors import LoadFailed, ModelNotFound, ModelNotReady
from .settings import Settings
from .store import LOADING, READY, UNAVAILABLE, Row, Store, key

log = logging.getLogger("depot.registry")

NEW_ON_DISK = "new on disk: call load"
CHANGED_ON_DISK = "changed on disk: call load to apply"
RELOAD_FAILED = "reload failed: "
LOAD_INTERRUPTED = "load interrupted: the loading process died; call load"


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


class Registry:
    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self._cache: dict[str, tuple[int, runtimes.Runtime]] = {}
        self._seen: tuple[int, dict[str, Row]] = (-1, {})
        self._lock = threading.RLock()
        self._syncing = False

    @classmethod
    def open(cls, settings: Settings) -> "Registry":
        return cls(settings, Store(settings.state_dir))

    # -- data plane ---------------------------------------------------------

    def rows(self) -> dict[str, Row]:
        """Every row as the store holds it now. The change mark is read
        first: rows read after it are at least as new as the mark says."""
        mark = self.store.change_mark()
        seen_mark, rows = self._seen
        if mark != seen_mark:
            rows = {row.name: row for row in self.store.rows()}
            self._seen = (mark, rows)
        return rows

    def row(self, name: str, version: str | None = None, fresh: bool = False) -> Row:
        row = self.store.get(name) if fresh else self.rows().get(name)
        if row is None:
            raise ModelNotFound(f"model {name!r} not found")
        if version is not None and version != row.version:
            raise ModelNotFound(f"model {name!r} has no version {version!r}")
        return row

    def get_ready(self, name: str, version: str | None = None) -> tuple[Row, runtimes.Runtime]:
        """The model's row and this worker's runtime for it, brought in line
        with the shared generation; the one store read of an inference."""
        row = self.row(name, version)
        for _ in range(3):
            if row.state != READY:
                if name in self._cache:
                    self._drop(name)
                raise ModelNotReady(f"model {name!r} is not ready ({row.state}: {row.reason})")
            cached = self._cache.get(name)
            if cached is not None and cached[0] == row.generation:
                return row, cached[1]
            try:
                return row, self._catch_up(row)
            except ModelNotReady:
                # A load or unload may have replaced that generation's
                # snapshot while we read it: if so, serve what holds now.
                newer = self.row(name, version, fresh=True)
                if newer.generation == row.generation:
                    raise
                row = newer
        raise ModelNotReady(f"model {name!r} is changing too fast to serve; try again")

    def index(self, ready_only: bool = False) -> list[dict[str, Any]]:
        entries = []
        for row in self.store.rows():
            if ready_only and row.state != READY:
                continue
            entry: dict[str, Any] = {"name": row.name}
            if row.version is not None:
                entry["version"] = row.version
            entry["state"] = row.state
            entry["reason"] = row.reason
            entries.append(entry)
        return entries

    def metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        row = self.row(name, version)
        details = orjson.loads(row.details)
        return {
            "name": row.name,
            "versions": [row.version] if row.version is not None else [],
            "platform": row.runtime or "",
            "inputs": details.get("inputs") or [],
            "outputs": details.get("outputs") or [],
        }

    def server_ready(self) -> bool:
        return self.store.get_meta("started") == "1"

    def watcher_pid(self) -> int | None:
        """The process that watches the models folder, if one does."""
        pid = self.store.get_meta("watcher_pid")
        return int(pid) if pid else None

    # -- control plane ------------------------------------------------------

    def startup(self) -> None:
        """Start a deployment from the disk: register every model found and,
        when configured, load it. Runs once, in the gunicorn master, so the
        loaded copies are shared with the workers it forks."""
        if not self.settings.models.is_dir():
            raise FileNotFoundError(f"DEPOT_MODELS: no such folder: {self.settings.models}")
        self.store.reset()
        shutil.rmtree(self._snapshots(), ignore_errors=True)
        self.reconcile()
        if self.settings.load_at_startup:
            for row in self.store.rows():
                try:
                    self.load(row.name)
                except (LoadFailed, ModelNotFound) as e:
                    log.warning("%s", e.message)
        self.store.set_meta("started", "1")

    def reconcile(self, busy: frozenset[str] = frozenset()) -> None:
        """Bring the registry in line with the disk: register what is new
        or changed, forget what is gone. Top-level entries named in ``busy``
        are still being written and are left as they are."""
        specs = repository.scan(self.settings.models, exclude=self.settings.state_dir)
        for spec in specs.values():
            if spec.source.name not in busy:
                self.register(spec)
        for row in self.store.rows():
            if row.name not in specs and Path(row.source).name not in busy:
                self.forget(row.name)

    def register(self, spec: repository.ModelSpec) -> None:
        """Record a model as the disk describes it. A READY model keeps
        serving what it loaded; its reason says when the disk has moved on."""
        with self.store.lock(spec.name):
            row = self.store.get(spec.name)
            mark = repository.fingerprint(spec)
            if row is None:
                self.store.put(self._registered(spec).replace(fingerprint=mark))
                log.info("registered %s: %s", spec.name, self.store.get(spec.name).reason)
            elif row.state == READY:
                reason = "" if mark == row.fingerprint else CHANGED_ON_DISK
                if reason and row.reason.startswith(RELOAD_FAILED):
                    reason = row.reason  # says more: the change was tried and failed
                if row.reason != reason:
                    self.store.put(row.replace(reason=reason))
                    log.info("%s: %s", spec.name, reason or "disk matches the loaded copy")
            elif row.state == LOADING:  # we hold the lock, so its loader died
                self.store.put(row.replace(state=UNAVAILABLE, reason=LOAD_INTERRUPTED))
                log.warning("%s: %s", spec.name, LOAD_INTERRUPTED)
            elif row.state == UNAVAILABLE and mark != row.fingerprint:
                if spec.error:
                    reason = f"cannot load: {spec.error}"
                elif row.reason in (NEW_ON_DISK, "unloaded"):
                    reason = row.reason
                else:
                    reason = CHANGED_ON_DISK
                self.store.put(self._registered(spec, row).replace(
                    reason=reason, fingerprint=mark, details=self._details(spec)))
                log.info("%s changed on disk: %s", spec.name, reason)

    def forget(self, name: str) -> None:
        """A model gone from the disk leaves the index; every worker drops
        its copy, and requests for it are 404 from then on."""
        with self.store.lock(name):
            row = self.store.get(name)
            if row is not None:
                self._forget(row)
                log.info("removed %s: gone from the repository", name)

    def load(self, name: str) -> Row:
        with self.store.lock(name):
            spec = repository.find(self.settings.models, name, self.settings.state_dir)
            row = self.store.get(name)
            if spec is None:
                if row is not None:
                    self._forget(row)
                raise ModelNotFound(f"model {name!r} is not in the repository")
            if row is None or row.state != READY:
                row = self._registered(spec, row).replace(state=LOADING, reason="loading")
                self.store.put(row)
            try:
                new = self._load_spec(spec, row)
            except (Exception, SystemExit) as e:  # a pickle may call exit()
                self._publish_failure(spec, row, _describe(e))
                raise LoadFailed(f"load failed for model {name!r}: {_describe(e)}") from None
            log.info("loaded %s (generation %d)", name, new.generation)
            return new

    def unload(self, name: str) -> Row:
        with self.store.lock(name):
            row = self.store.get(name)
            if row is None:
                spec = repository.find(self.settings.models, name, self.settings.state_dir)
                if spec is None:
                    raise ModelNotFound(f"model {name!r} not found")
                row = self._registered(spec)
            new = row.replace(state=UNAVAILABLE, reason="unloaded", snapshot=None,
                              generation=row.generation + 1)
            self.store.put(new)
            self._drop(name)
            self._discard_snapshots(name, keep=None)
            log.info("unloaded %s", name)
            return new

    # -- worker cache -------------------------------------------------------

    def sync(self) -> None:
        """Bring this worker's cache in line with every row at once."""
        rows = self.rows()
        for name in list(self._cache):
            row = rows.get(name)
            if row is None or row.state != READY:
                self._drop(name)
        for row in rows.values():
            cached = self._cache.get(row.name)
            if row.state == READY and (cached is None or cached[0] != row.generation):
                try:
                    self._catch_up(row)
                except ModelNotReady as e:
                    log.error("%s", e.message)

    def start_sync(self) -> None:
        """Run :meth:`sync` in a daemon thread of this worker, forever."""
        if self._syncing:
            return
        self._syncing = True

        def loop() -> None:
            while True:
                try:
                    self.sync()
                except Exception:  # a passing store error must not end the thread
                    log.exception("sync failed")
                threading.Event().wait(self.settings.sync_interval)

        threading.Thread(target=loop, name="depot-sync", daemon=True).start()

    def _catch_up(self, row: Row) -> runtimes.Runtime:
        with self._lock:
            cached = self._cache.get(row.name)
            if cached is not None and cached[0] == row.generation:
                return cached[1]
            try:
                runtime = self._build(row.runtime, Path(row.snapshot or ""), row.details)
            except (Exception, SystemExit) as e:  # a pickle may call exit()
                raise ModelNotReady(
                    f"model {row.name!r} could not be loaded on this worker: {_describe(e)}"
                ) from None
            self._swap(row.name, row.generation, runtime)
            return runtime

    def _swap(self, name: str, generation: int, runtime: runtimes.Runtime) -> None:
        with self._lock:
            old = self._cache.get(name)
            self._cache[name] = (generation, runtime)
        if old is not None and old[1] is not runtime:
            old[1].unload()

    def _drop(self, name: str) -> None:
        with self._lock:
            old = self._cache.pop(name, None)
        if old is not None:
            old[1].unload()

    # -- helpers ------------------------------------------------------------

    def _build(self, runtime_name: str | None, artifact: Path, details: str) -> runtimes.Runtime:
        cls = runtimes.by_name(runtime_name or "")
        if cls is None:
            raise LoadFailed(f"no runtime named {runtime_name!r}")
        runtime = cls(artifact, orjson.loads(details).get("parameters") or {})
        runtime.load()
        return runtime

    def _load_spec(self, spec: repository.ModelSpec, row: Row) -> Row:
        """Copy the artifact to a snapshot, load it here, then publish it."""
        if spec.error:
            raise LoadFailed(spec.error)
        assert spec.artifact is not None
        mark = repository.fingerprint(spec)  # before the copy: a later write shows as a change
        generation = row.generation + 1
        snapshot = self._snapshot_dir(spec.name, generation)
        snapshot.mkdir(parents=True, exist_ok=True)
        artifact = Path(shutil.copy2(spec.artifact, snapshot / spec.artifact.name))
        details = self._details(spec)
        try:
            runtime = self._build(spec.runtime, artifact, details)
        except BaseException:
            shutil.rmtree(snapshot, ignore_errors=True)
            raise
        if not spec.inputs or not spec.outputs:
            declared = orjson.loads(details)
            found = runtime.metadata()
            declared["inputs"] = spec.inputs or found["inputs"]
            declared["outputs"] = spec.outputs or found["outputs"]
            details = orjson.dumps(declared).decode()
        new = self._registered(spec, row).replace(
            state=READY, reason="", generation=generation, snapshot=str(artifact), details=details,
            fingerprint=mark)
        self.store.put(new)
        self._swap(spec.name, generation, runtime)
        self._discard_snapshots(spec.name, keep=generation)
        return new

    def _publish_failure(self, spec: repository.ModelSpec, row: Row, message: str) -> None:
        current = self.store.get(spec.name) or row
        if current.state == READY:
            reason = f"{RELOAD_FAILED}{message}; serving the previous copy"
            self.store.put(current.replace(reason=reason))
        else:
            self.store.put(current.replace(state=UNAVAILABLE, reason=f"load failed: {message}"))
        log.warning("load of %s failed: %s", spec.name, message)

    def _registered(self, spec: repository.ModelSpec, row: Row | None = None) -> Row:
        """The row for a model as the disk now describes it, keeping the
        shared state (state, generation, snapshot) of ``row`` if given."""
        reason = f"load failed: {spec.error}" if spec.error else NEW_ON_DISK
        return Row(
            name=spec.name,
            state=row.state if row else UNAVAILABLE,
            reason=row.reason if row else reason,
            generation=row.generation if row else 0,
            version=spec.version,
            runtime=spec.runtime,
            snapshot=row.snapshot if row else None,
            source=str(spec.source),
            details=row.details if row and row.state == READY else self._details(spec),
            fingerprint=row.fingerprint if row else "",
        )

    @staticmethod
    def _details(spec: repository.ModelSpec) -> str:
        return orjson.dumps({"parameters": spec.parameters, "inputs": spec.inputs,
                             "outputs": spec.outputs}).decode()

    def _forget(self, row: Row) -> None:
        self.store.delete(row.name)
        self._drop(row.name)
        self._discard_snapshots(row.name, keep=None)

    def _snapshots(self) -> Path:
        return self.settings.state_dir / "snapshots"

    def _snapshot_dir(self, name: str, generation: int) -> Path:
        return self._snapshots() / key(name) / str(generation)

    def _discard_snapshots(self, name: str, keep: int | None) -> None:
        folder = self._snapshots() / key(name)
        if not folder.is_dir():
            return
        for child in folder.iterdir():
            if child.name != str(keep):
                shutil.rmtree(child, ignore_errors=True)
