"""Building this process's copy of a model version: a runtime loaded from an artifact.

A load builds its first copy from the snapshot it has just taken of the
models folder (:func:`load_runtime`, called by :mod:`.loader`). Every other
copy (a worker catching up, the master staging one for its next forks, a
restart) is built from this host's snapshot of the published row
(:meth:`Copies.build`), so that every process serves the bytes the load
published. A host that has no snapshot (the load happened on another host,
or this one lost its copy) makes one from its own models folder and keeps it
only if its digest is the published one; otherwise it refuses the model and
says why (:data:`NOT_SERVED_HERE`).
"""
from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import orjson

import runtimes

from ..errors import LoadFailed
from ..store import Row
from .cache import Key, Refused
from .events import describe_error, event
from .repository import ModelFolder
from .snapshots import ArtifactDiffers, Snapshots

#: the start of the reason a host gives for not serving a READY model
NOT_SERVED_HERE = "this host cannot serve the loaded copy: "


def load_runtime(key_: Key, runtime_name: str | None, artifact: Path,
                 details: str) -> runtimes.Runtime:
    """Load a runtime. What its library warns about while loading (an
    artifact saved by another version, an old format) is logged as a
    ``warning`` event of that model, one JSON line like every other."""
    cls = runtimes.by_name(runtime_name or "")
    if cls is None and runtimes.is_user(runtime_name):
        cls = runtimes.user_runtime(runtime_name or "", artifact)
    if cls is None:
        raise LoadFailed(f"no runtime named {runtime_name!r}")
    runtime = cls(artifact, orjson.loads(details).get("parameters") or {})
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            runtime.load()
        finally:
            for warning in said:
                event("warning", key_[0], key_[1], f"{warning.category.__name__}: "
                      f"{str(warning.message).strip()}", logging.WARNING)
    return runtime


@dataclass(frozen=True)
class Copies:
    """This process's copies of published rows, built from this host's snapshots."""

    snapshots: Snapshots
    folder: ModelFolder

    def build(self, row: Row) -> runtimes.Runtime:
        """This process's copy of a published row, from this host's snapshot
        (made first from the models folder when the host has none: the load
        happened on another host, or this one lost its copy). Raises
        :class:`~app.registry.cache.Refused` with the reason when it cannot."""
        try:
            runtime = load_runtime((row.name, row.version), row.runtime, self._snapshot(row),
                                   row.details)
            event("copy", row.name, row.version,
                  f"generation {row.generation} loaded by process {os.getpid()}")
            return runtime
        except ArtifactDiffers as e:
            raise Refused(f"{NOT_SERVED_HERE}{e}; call load to publish it") from None
        except (Exception, SystemExit) as e:  # a pickle may call exit()
            raise Refused(f"{NOT_SERVED_HERE}{describe_error(e)}") from None

    def _snapshot(self, row: Row) -> Path:
        path = self.snapshots.path(row)
        if path.exists():
            return path
        spec = next((s for s in self.folder.find(row.name)
                     if s.version == row.version and s.artifact is not None), None)
        if spec is None or spec.artifact is None:
            raise ArtifactDiffers("this host's models folder has no artifact for it")
        return self.snapshots.fetch(row, spec.artifact)
