"""Published artifacts: each host's private copies in its state folder that
its workers load, so all of them serve the same bytes whatever happens on
disk.

A load copies the artifact (a file, or a folder for MLflow models and
runtimes of one's own) to ``<state>/snapshots/<model key>/<generation>/``
and publishes that generation with the copy's SHA-256. Another host (or this
one after losing its copy) makes its own from its models folder, and keeps it
only if the digest matches: every host serves the bytes the load published,
or refuses the model. A copy no row serves (a partial one left by a loader
that died, or an old generation) is removed.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import threading
from pathlib import Path

from ..store import Row, key

#: bytes read and written at a time while copying and hashing
CHUNK = 1 << 20


class ArtifactDiffers(Exception):
    """This host's models folder holds other bytes than the load published."""


class Snapshots:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, name: str, version: str, generation: int) -> Path:
        return self.root / key(f"{name}\0{version}") / str(generation)

    def path(self, row: Row) -> Path:
        """Where this host keeps the copy a published row serves."""
        return self.folder(row.name, row.version, row.generation) / (row.snapshot or "")

    def copy(self, name: str, version: str, generation: int, artifact: Path) -> tuple[Path, str]:
        """Copy ``artifact`` as that generation's snapshot; return the copy
        and the SHA-256 of its bytes. A copy that fails half-way is removed
        before the error goes on."""
        folder = self.folder(name, version, generation)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / artifact.name
            return target, _copy(artifact, target)
        except BaseException:
            self.remove(name, version, generation)
            raise

    def fetch(self, row: Row, artifact: Path) -> Path:
        """This host's copy of a published row, made from ``artifact`` (its
        models folder's) if there is none yet, and kept only if its digest
        is the row's. Several workers may fetch at once: each writes its own
        partial file and the first complete one is renamed into place."""
        target = self.path(row)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}")
        try:
            digest = _copy(artifact, partial)
            if digest != row.digest:
                raise ArtifactDiffers(
                    f"this host's models folder holds other bytes than the load published "
                    f"({artifact.name}: sha256 {digest[:12]}, published {row.digest[:12]})")
            try:
                os.replace(partial, target)
            except OSError:  # a folder: another process put its copy first
                if not target.is_dir():
                    raise
        finally:
            _remove(partial)
        return target

    def remove(self, name: str, version: str, generation: int) -> None:
        shutil.rmtree(self.folder(name, version, generation), ignore_errors=True)

    def discard(self, name: str, version: str, keep: int | None) -> None:
        """Remove a model version's snapshots but the generation ``keep``."""
        for child in self._generations(name, version):
            if child.name != str(keep):
                shutil.rmtree(child, ignore_errors=True)

    def discard_older(self, name: str, version: str, generation: int) -> None:
        """Remove a model version's snapshots older than ``generation``: no
        row serves them, and a load at work on this host writes a newer one."""
        for child in self._generations(name, version):
            if not child.name.isdigit() or int(child.name) < generation:
                shutil.rmtree(child, ignore_errors=True)

    def _generations(self, name: str, version: str) -> list[Path]:
        folder = self.root / key(f"{name}\0{version}")
        return list(folder.iterdir()) if folder.is_dir() else []

    def keep_only(self, served: set[Path]) -> None:
        """Remove every snapshot folder but those in ``served``."""
        for folder in self.root.glob("*/*"):
            if folder not in served:
                shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def size(path: Path) -> int:
    """Bytes in an artifact: a file's, or every file's in a folder."""
    if path.is_dir():
        return sum(f.stat().st_size for f in files(path))
    return path.stat().st_size


def _copy(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` and return the SHA-256 of the bytes
    written, read once. A folder's digest covers each file's path and bytes."""
    if source.is_dir():
        digest = hashlib.sha256()
        for file in files(source):
            relative = file.relative_to(source)
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            digest.update(f"{relative}\0{_copy(file, target / relative)}\n".encode())
        target.mkdir(exist_ok=True)
        return digest.hexdigest()
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    shutil.copystat(source, target)
    return digest.hexdigest()


def files(folder: Path) -> list[Path]:
    """A folder's files, in a fixed order: not symlinks (a model's files are
    its own) nor compiled bytecode, which differs from host to host."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()
                  and "__pycache__" not in p.relative_to(folder).parts)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
