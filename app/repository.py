"""What the models folder holds: which models exist and how to load them.

It reads the disk and keeps no state. A model is one of

* a folder with ``model-settings.json`` (MLServer's layout, used unchanged),
* a folder holding one artifact such as ``model.joblib`` or ``model.json``,
* a bare artifact file at the top level (``iris.joblib`` is model ``iris``).

Names come only from what is on disk, never from a request, so a name in a
URL can never lead to a file outside the folder.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import runtimes

SETTINGS_FILE = "model-settings.json"
WELL_KNOWN = ("model.joblib", "model.pkl", "model.pickle", "model.json", "model.ubj", "model.bst")
IGNORED_SUFFIXES = (".swp", ".swx", ".tmp", ".part", "~")
IGNORED_NAMES = {"4913"}


@dataclass(frozen=True)
class ModelSpec:
    """One version of a model as the repository describes it (``version``
    is "" when it has none). ``error`` is set when the model is on disk but
    cannot be used as found (bad settings, no artifact)."""

    name: str
    source: Path
    artifact: Path | None = None
    runtime: str | None = None
    version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    inputs: list[dict[str, Any]] | None = None
    outputs: list[dict[str, Any]] | None = None
    error: str | None = None


def ignored(name: str) -> bool:
    """Hidden, temporary and editor files are never models."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or name in IGNORED_NAMES


def valid_name(name: Any) -> bool:
    return (isinstance(name, str) and 0 < len(name) <= 200 and not ignored(name)
            and not any(c in name for c in "/\\\0"))


def scan(root: Path, exclude: Path | None = None) -> list[ModelSpec]:
    """Every model version under ``root``, at most one per (name, version);
    ``exclude`` (Depot's own state folder, should it live there) is never a
    model."""
    specs: dict[tuple[str, str], ModelSpec] = {}
    if not root.is_dir():
        return []
    for entry in sorted(root.iterdir()):
        if exclude is not None and entry == exclude:
            continue
        for spec in describe(entry):
            specs.setdefault((spec.name, spec.version), spec)
    return list(specs.values())


def find(root: Path, name: str, exclude: Path | None = None) -> list[ModelSpec]:
    """Every version of one model on disk (none: it is not in the repository)."""
    return [spec for spec in scan(root, exclude) if spec.name == name]


def version_key(version: str) -> tuple:
    """Orders versions as people read them: "2" < "10", "v0.9" < "v0.10"."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                 for p in re.split(r"(\d+)", version) if p)


def describe(entry: Path) -> list[ModelSpec]:
    """The model versions that a top-level entry of the repository holds.

    Triton's layout, numbered sub-folders (``iris/1/model.joblib``), gives a
    version per folder; ``model-settings.json`` beside them applies to all."""
    if ignored(entry.name):
        return []
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
    return [_from_artifact(entry.name, entry, artifact)] if artifact else []


def _version(base: ModelSpec, folder: Path) -> ModelSpec:
    artifact = _artifact_in(folder)
    if artifact is None:
        return replace(base, version=folder.name,
                       error=f"no model artifact in version folder {folder.name}")
    runtime = base.runtime or getattr(runtimes.for_artifact(artifact), "name", None)
    return replace(base, version=folder.name, artifact=artifact, runtime=runtime)


def fingerprint(spec: ModelSpec) -> str:
    """Size and modification time of the files a model is made of: equal
    fingerprints mean the disk holds what was registered or loaded."""
    files = [spec.source / SETTINGS_FILE if spec.source.is_dir() else None, spec.artifact]
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


def _artifact_in(folder: Path) -> Path | None:
    for name in WELL_KNOWN:
        if (folder / name).is_file():
            return folder / name
    candidates = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not ignored(p.name) and p.name != SETTINGS_FILE
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
    version = parameters.get("version")
    implementation = settings.get("implementation")
    runtime = runtimes.for_implementation(implementation) if implementation else None
    base = ModelSpec(name=name, source=folder, parameters=parameters,
                     version=str(version) if version is not None else "",
                     runtime=runtime.name if runtime else None,
                     inputs=settings.get("inputs") or None,
                     outputs=settings.get("outputs") or None)
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


def _resolve_uri(folder: Path, uri: Any) -> Path | None:
    """MLServer's rule: a relative uri is relative to the settings file's
    folder, and a folder uri is searched for a well-known artifact. The
    result must stay inside the model's folder."""
    target = (folder / uri).resolve() if isinstance(uri, str) and uri else folder.resolve()
    if not target.is_relative_to(folder.resolve()):
        return None
    if target.is_dir():
        return _artifact_in(target)
    return target if target.is_file() else None
