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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import runtimes

SETTINGS_FILE = "model-settings.json"
WELL_KNOWN = ("model.joblib", "model.pkl", "model.pickle", "model.json", "model.ubj", "model.bst")
IGNORED_SUFFIXES = (".swp", ".swx", ".tmp", ".part", "~")
IGNORED_NAMES = {"4913"}


@dataclass(frozen=True)
class ModelSpec:
    """One model as the repository describes it. ``error`` is set when the
    model is on disk but cannot be used as found (bad settings, no artifact)."""

    name: str
    source: Path
    artifact: Path | None = None
    runtime: str | None = None
    version: str | None = None
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


def scan(root: Path, exclude: Path | None = None) -> dict[str, ModelSpec]:
    """Every model under ``root``; ``exclude`` (Depot's own state folder,
    should it live there) is never a model."""
    specs: dict[str, ModelSpec] = {}
    if not root.is_dir():
        return specs
    for entry in sorted(root.iterdir()):
        if exclude is not None and entry == exclude:
            continue
        spec = describe(entry)
        if spec is not None and spec.name not in specs:
            specs[spec.name] = spec
    return specs


def find(root: Path, name: str, exclude: Path | None = None) -> ModelSpec | None:
    return scan(root, exclude).get(name)


def describe(entry: Path) -> ModelSpec | None:
    """The model that a top-level entry of the repository holds, if any."""
    if ignored(entry.name):
        return None
    if entry.is_dir():
        if (entry / SETTINGS_FILE).is_file():
            return _from_settings(entry)
        artifact = _artifact_in(entry)
        return _from_artifact(entry.name, entry, artifact) if artifact else None
    if entry.is_file() and runtimes.for_artifact(entry):
        return _from_artifact(entry.stem, entry, entry)
    return None


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
        if p.is_file() and not ignored(p.name) and runtimes.for_artifact(p)
    )
    return candidates[0] if len(candidates) == 1 else None


def _from_artifact(name: str, source: Path, artifact: Path) -> ModelSpec:
    runtime = runtimes.for_artifact(artifact)
    return ModelSpec(name=name, source=source, artifact=artifact,
                     runtime=runtime.name if runtime else None)


def _from_settings(folder: Path) -> ModelSpec:
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
        return ModelSpec(name=name, source=folder, error=f"{SETTINGS_FILE}: 'parameters' must be an object")
    version = parameters.get("version")
    base = dict(name=name, source=folder, parameters=parameters,
                version=str(version) if version is not None else None,
                inputs=settings.get("inputs") or None, outputs=settings.get("outputs") or None)
    artifact = _resolve_uri(folder, parameters.get("uri"))
    if artifact is None:
        return ModelSpec(**base, error=f"no model artifact found for uri {parameters.get('uri')!r}")
    implementation = settings.get("implementation")
    runtime = (runtimes.for_implementation(implementation) if implementation
               else runtimes.for_artifact(artifact))
    if runtime is None:
        return ModelSpec(**base, artifact=artifact,
                         error=f"no runtime for implementation {implementation!r}")
    return ModelSpec(**base, artifact=artifact, runtime=runtime.name)


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
