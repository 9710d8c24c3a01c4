"""A model version's shared state, as every store keeps it: one frozen row."""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
LOADING = "LOADING"


def key(name: str) -> str:
    """A file-name-safe key for a model name, whatever characters it has."""
    return hashlib.sha1(name.encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Row:
    """The shared state of one version of a model. ``generation`` grows on every load and unload;
    a worker whose copy has another generation must catch up before serving.
    ``snapshot`` names the artifact's file in its generation's snapshot
    folder: each host's private copy (:mod:`app.registry.snapshots`) that its
    workers load, so all of them serve the same bytes whatever happens on
    disk later; ``digest`` is the SHA-256 of those bytes, and a host whose
    copy would differ refuses the model instead. ``details`` is JSON
    (parameters, declared inputs/outputs), parsed only off the hot path.
    ``fingerprint`` identifies the files on disk the row was made from (for
    a READY model: the files it was loaded from)."""

    name: str
    version: str  # "" when the model has none
    state: str
    reason: str
    generation: int
    runtime: str | None
    snapshot: str | None
    source: str
    details: str = "{}"
    fingerprint: str = ""
    digest: str = ""

    def replace(self, **changes: object) -> "Row":
        return dataclasses.replace(self, **changes)


#: the rows' columns, in the order of Row's fields, for every store's SQL,
#: and as many parameter marks
COLUMNS = ", ".join(f.name for f in dataclasses.fields(Row))
MARKS = ", ".join("%s" for _ in dataclasses.fields(Row))
