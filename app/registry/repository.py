"""What the models folder holds: which models exist and how to load them.

It reads the disk and keeps no state. A model is one of

* a folder with ``model-settings.json`` (MLServer's layout, used unchanged),
* a folder holding one artifact such as ``model.joblib`` or ``model.json``,
* a bare artifact file at the top level (``iris.joblib`` is model ``iris``).

Names come only from what is on disk, never from a request, so a name in a
URL can never lead to a file outside the folder.

The folder is a trust boundary: loading a pickle runs its code. A symlink
that leads outside it (or leads nowhere) is therefore listed as a model that
cannot load, with the link in its error, unless ``follow_symlinks`` says to
follow it; symlinks that stay inside the folder are used as they are.

:class:`ModelFolder` is the folder as the registry reads it: where it is and
how to read it (the settings), and the row a model version on disk makes
before it is loaded.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson

import runtimes

from ..settings import SERVER_SETTINGS, Settings
from ..store import READY, UNAVAILABLE, Row
from . import snapshots

SETTINGS_FILE = "model-settings.json"
#: how deep below a folder with no model of its own model-settings.json
#: files are looked for, as MLServer looks for them
SETTINGS_DEPTH = 4
WELL_KNOWN = ("model.joblib", "model.pkl", "model.pickle", "model.json", "model.ubj", "model.bst")
IGNORED_SUFFIXES = (".swp", ".swx", ".tmp", ".part", "~")
IGNORED_NAMES = {"4913"}
#: the reason of a model version registered from the disk, not loaded yet
NEW_ON_DISK = "new on disk: call load"


@dataclass(frozen=True)
class ModelSpec:
    """One version of a model as the repository describes it (``version``
    is "" when it has none). ``error`` is set when the model is on disk but
    cannot be used as found (bad settings, no artifact, a symlink out of the
    folder)."""

    name: str
    source: Path
    artifact: Path | None = None
    runtime: str | None = None
    version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] | None = None
    outputs: list[dict[str, Any]] | None = None
    #: requests one model call may answer (app/v2/batching.py); 0 or 1: each alone
    max_batch_size: int = 0
    error: str | None = None


#: the start of the error of a model version that several folders declare
DUPLICATE = "declared more than once in the repository, by"


def ignored(name: str) -> bool:
    """Hidden, temporary and editor files are never models."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name in IGNORED_NAMES


def valid_name(name: Any) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 200 and not ignored(name)
            and not any(c in name for c in "/\\\0"))


def scan(root: Path, exclude: Path | None = None, *,
         follow_symlinks: bool = False) -> list[ModelSpec]:
    """Every model version under ``root``, at most one per (name, version);
    ``exclude`` (Depot's own state folder, should it live there) is never a
    model."""
    found: dict[tuple[str, str], list[ModelSpec]] = {}
    if not root.is_dir():
        return []
    for entry in sorted(root.iterdir()):
        if exclude is not None and entry == exclude or entry.name == SERVER_SETTINGS:
            continue
        for spec in describe(entry, follow_symlinks=follow_symlinks):
            found.setdefault((spec.name, spec.version), []).append(spec)
    return [_one_of(group, root) for group in found.values()]


def _one_of(group: list[ModelSpec], root: Path) -> ModelSpec:
    """The one spec of a (name, version). Several places declaring it is an
    error that names them all: serving one of them would be a guess."""
    if len(group) == 1:
        return group[0]
    where = ", ".join(str(spec.source.relative_to(root)) for spec in group)
    return replace(group[0], error=f"{DUPLICATE} {where}; keep one of them")


def find(root: Path, name: str, exclude: Path | None = None, *,
         follow_symlinks: bool = False) -> list[ModelSpec]:
    """Every version of one model on disk (none: it is not in the repository)."""
    return [spec for spec in scan(root, exclude, follow_symlinks=follow_symlinks)
            if spec.name == name]


@dataclass(frozen=True)
class ModelFolder:
    """The deployment's models folder, read with the deployment's settings,
    and the rows its model versions make as the disk describes them."""

    root: Path
    #: Depot's own state folder, should it live inside: never a model
    exclude: Path | None = None
    follow_symlinks: bool = False

    @classmethod
    def of(cls, settings: Settings) -> "ModelFolder":
        return cls(settings.models, settings.state_dir, settings.follow_symlinks)

    def scan(self) -> list[ModelSpec]:
        return scan(self.root, exclude=self.exclude, follow_symlinks=self.follow_symlinks)

    def find(self, name: str) -> list[ModelSpec]:
        return find(self.root, name, self.exclude, follow_symlinks=self.follow_symlinks)

    def row(self, spec: ModelSpec, stored: Row | None = None) -> Row:
        """The row for a model version as the disk now describes it, keeping
        the shared state (state, generation, snapshot) of ``stored`` if given."""
        reason = f"load failed: {spec.error}" if spec.error else NEW_ON_DISK
        return Row(
            name=spec.name,
            version=spec.version,
            state=stored.state if stored else UNAVAILABLE,
            reason=stored.reason if stored else reason,
            generation=stored.generation if stored else 0,
            runtime=spec.runtime,
            snapshot=stored.snapshot if stored else None,
            source=str(spec.source),
            details=stored.details if stored and stored.state == READY else details(spec),
            fingerprint=stored.fingerprint if stored else "",
            digest=stored.digest if stored else "",
        )


def details(spec: ModelSpec) -> str:
    """A row's ``details`` as the spec declares them (JSON: parameters,
    inputs, outputs, ``max_batch_size``)."""
    return orjson.dumps({"parameters": spec.parameters, "inputs": spec.inputs,
                         "outputs": spec.outputs,
                         "max_batch_size": spec.max_batch_size}).decode()


def version_key(version: str) -> tuple:
    """Orders versions as people read them: "2" < "10", "v0.9" < "v0.10"."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"(\d+)", version) if p)


def describe(entry: Path, *, follow_symlinks: bool = False) -> list[ModelSpec]:
    """The model versions that a top-level entry of the repository holds.

    Triton's layout, numbered sub-folders (``iris/1/model.joblib``), gives a
    version per folder; ``model-settings.json`` beside them applies to all.
    A version whose files are reached through a symlink it may not follow
    keeps its place, with that as its error."""
    if ignored(entry.name):
        return []
    root = entry.parent
    problem = _symlink_problem(root, entry, follow_symlinks)
    if problem:  # not even read: what lies behind the link is not ours
        name = _link_name(entry)
        return [ModelSpec(name=name, source=entry, error=problem)] if name else []
    return [_guarded(root, spec, follow_symlinks) for spec in _describe(entry)]


def _symlink_problem(root: Path, path: Path, follow: bool) -> str | None:
    """Why ``path`` (spelled inside ``root``) may not be used: a symlink on
    its way that leads nowhere or, unless ``follow``, outside ``root``. Each
    link is checked, so a detour outside and back in is refused too."""
    root, path = Path(os.path.normpath(root)), Path(os.path.normpath(path))
    base = root.resolve()
    current = root
    for part in path.relative_to(root).parts:
        current = current / part
        if not current.is_symlink():
            continue
        relative = current.relative_to(root)
        try:
            target = current.resolve(strict=True)
        except (OSError, RuntimeError):  # missing, or a loop
            return f"broken symlink: {relative} -> {os.readlink(current)}"
        if not follow and not target.is_relative_to(base):
            return (f"symlink leads outside the models folder: {relative} -> {target}; "
                    f"set DEPOT_FOLLOW_SYMLINKS=true to follow it")
    return None


def _link_name(entry: Path) -> str | None:
    """The model a refused top-level symlink stands for: a folder's name or
    an artifact's stem (a broken link without a suffix was most likely a
    folder); None when it would not be a model anyway."""
    if entry.is_dir():
        return entry.name
    if runtimes.for_artifact(entry):
        return entry.stem
    return entry.name if not entry.exists() and not entry.suffix else None


def _guarded(root: Path, spec: ModelSpec, follow: bool) -> ModelSpec:
    """``spec``, with an error if a file it is made of (settings, uri,
    artifact) is reached through a symlink it may not follow."""
    paths = [spec.artifact]
    if spec.source.is_dir():
        paths.append(spec.source / SETTINGS_FILE)
        paths.append(_uri_path(spec.source, spec.parameters.get("uri")))
    for path in paths:
        problem = _symlink_problem(root, path, follow) if path is not None else None
        if problem:
            return replace(spec, error=problem)
    return spec


def _describe(entry: Path) -> list[ModelSpec]:
    """What ``entry`` holds, as found (symlinks are judged by the caller)."""
    if entry.is_file():
        return [_from_artifact(entry.stem, entry, entry)] if runtimes.for_artifact(entry) else []
    if not entry.is_dir():
        return []
    numbered = sorted(d for d in entry.iterdir() if d.is_dir() and d.name.isdigit())
    has_settings = (entry / SETTINGS_FILE).is_file()
    if numbered and not _artifact_in(entry):
        base = _from_settings(entry, versioned=True) if has_settings else \
            ModelSpec(name=entry.name, source=entry)
        if base.error:
            return [base]
        return [_version(base, folder) for folder in numbered]
    if has_settings:
        return [_from_settings(entry)]
    artifact = _artifact_in(entry)
    if artifact:
        return [_from_artifact(entry.name, entry, artifact)]
    return [spec for folder in _settings_below(entry) for spec in _describe(folder)]


def _settings_below(folder: Path, depth: int = SETTINGS_DEPTH) -> list[Path]:
    """The folders below ``folder`` that hold a model-settings.json, each
    once (not below one that does), as MLServer finds them in a project."""
    found: list[Path] = []
    if depth <= 0:
        return found
    for child in sorted(folder.iterdir()):
        if child.is_symlink() or not child.is_dir() or ignored(child.name):
            continue
        if (child / SETTINGS_FILE).is_file():
            found.append(child)
        else:
            found.extend(_settings_below(child, depth - 1))
    return found


def _version(base: ModelSpec, folder: Path) -> ModelSpec:
    artifact = folder if runtimes.is_user(base.runtime) else _artifact_in(folder)
    if artifact is None:
        return replace(base, version=folder.name,
                       error=f"no model artifact in version folder {folder.name}")
    runtime = base.runtime or getattr(runtimes.for_artifact(artifact), "name", None)
    return replace(base, version=folder.name, artifact=artifact, runtime=runtime)


def fingerprint(spec: ModelSpec) -> str:
    """Size and modification time of the files a model is made of: equal
    fingerprints mean the disk holds what was registered or loaded."""
    files = [spec.source / SETTINGS_FILE if spec.source.is_dir() else None, spec.artifact]
    if spec.artifact is not None and spec.artifact.is_dir():  # every file in it
        files[1:] = [p for p in snapshots.files(spec.artifact) if p.name != SETTINGS_FILE]
    parts = []
    for path in files:
        try:
            stat = path.stat() if path is not None else None
        except OSError:
            stat = None
        if stat is not None:
            parts.append(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}")
    if spec.error:
        parts.append(spec.error)
    return "|".join(parts)


def _file_like(path: Path) -> bool:
    """A file, or a broken symlink (kept, so that it is reported)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _artifact_in(folder: Path) -> Path | None:
    """The artifact a folder holds: the folder itself when it is one (an
    MLflow model: its ``MLmodel`` beside a model.pkl), else a well-known
    file name, else its one file that a runtime loads."""
    if runtimes.for_artifact(folder):
        return folder
    for name in WELL_KNOWN:
        if _file_like(folder / name):
            return folder / name
    candidates = sorted(
        p for p in folder.iterdir()
        if _file_like(p) and not ignored(p.name) and p.name != SETTINGS_FILE
        and runtimes.for_artifact(p)
    )
    return candidates[0] if len(candidates) == 1 else None


def _from_artifact(name: str, source: Path, artifact: Path) -> ModelSpec:
    runtime = runtimes.for_artifact(artifact)
    return ModelSpec(name=name, source=source, artifact=artifact,
                     runtime=runtime.name if runtime else None)


def _from_settings(folder: Path, versioned: bool = False) -> ModelSpec:
    """A model from MLServer's ``model-settings.json``. ``versioned``: the
    artifacts live in numbered sub-folders, so no uri is resolved here."""
    path = folder / SETTINGS_FILE
    try:
        settings = json.loads(path.read_text())
        if not isinstance(settings, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        return ModelSpec(name=folder.name, source=folder, error=f"bad {SETTINGS_FILE}: {e}")
    name = settings.get("name") or folder.name
    if not valid_name(name):
        name = folder.name
    parameters = settings.get("parameters") or {}
    if not isinstance(parameters, dict):
        return ModelSpec(name=name, source=folder,
                         error=f"{SETTINGS_FILE}: 'parameters' must be an object")
    batch = settings.get("max_batch_size", 0)
    if type(batch) is not int or batch < 0:
        return ModelSpec(name=name, source=folder,
                         error=f"{SETTINGS_FILE}: 'max_batch_size' must be a non-negative integer")
    version = parameters.get("version")
    implementation = settings.get("implementation")
    runtime = runtimes.for_implementation(implementation) if implementation else None
    base = ModelSpec(name=name, source=folder, parameters=parameters,
                     version=str(version) if version is not None else "",
                     runtime=runtime.name if runtime else None,
                     inputs=settings.get("inputs") or None,
                     outputs=settings.get("outputs") or None, max_batch_size=batch)
    if runtimes.is_user(implementation):
        # a runtime of one's own: the whole folder is its artifact, so its
        # module travels with the model (docs/runtimes.md)
        return replace(base, runtime=implementation, artifact=None if versioned else folder)
    if implementation and runtime is None:
        return replace(base, error=f"no runtime for implementation {implementation!r}")
    if versioned:
        return base
    artifact = _resolve_uri(folder, parameters.get("uri"))
    if artifact is None:
        return replace(base, error=f"no model artifact found for uri {parameters.get('uri')!r}")
    if runtime is None:
        runtime = runtimes.for_artifact(artifact)
    if runtime is None:
        return replace(base, artifact=artifact, error=f"no runtime for {artifact.name}")
    return replace(base, artifact=artifact, runtime=runtime.name)


def _uri_path(folder: Path, uri: Any) -> Path | None:
    """Where a uri points, spelled inside the model's folder (no symlink is
    followed: :func:`_guarded` judges those); None when it names a place
    outside the folder, such as ``../other`` or an absolute path."""
    base = Path(os.path.normpath(folder))
    target = Path(os.path.normpath(base / uri)) if isinstance(uri, str) and uri else base
    return target if target.is_relative_to(base) else None


def _resolve_uri(folder: Path, uri: Any) -> Path | None:
    """MLServer's rule: a relative uri is relative to the settings file's
    folder, and a folder uri is searched for a well-known artifact. The
    result must stay inside the model's folder."""
    target = _uri_path(folder, uri)
    if target is None:
        return None
    if target.is_dir():
        return _artifact_in(target)
    return target if _file_like(target) else None
