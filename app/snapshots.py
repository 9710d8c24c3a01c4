"""Published artifacts: the private copies in the state folder that every
worker loads, so all of them serve the same bytes whatever happens on disk.

A load copies the artifact to ``<state>/snapshots/<model key>/<generation>/``
before it publishes that generation; a copy no row serves (a partial one
left by a loader that died, or an old generation) is removed.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from .store import key


class Snapshots:
    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, name: str, version: str, generation: int) -> Path:
        return self.root / key(f"{name}\0{version}") / str(generation)

    def copy(self, name: str, version: str, generation: int, artifact: Path) -> Path:
        """Copy ``artifact`` as that generation's snapshot; a copy that
        fails half-way is removed before the error goes on."""
        folder = self.folder(name, version, generation)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            return Path(shutil.copy2(artifact, folder / artifact.name))
        except BaseException:
            self.remove(name, version, generation)
            raise

    def remove(self, name: str, version: str, generation: int) -> None:
        shutil.rmtree(self.folder(name, version, generation), ignore_errors=True)

    def discard(self, name: str, version: str, keep: int | None) -> None:
        """Remove a model version's snapshots but the generation ``keep``."""
        folder = self.root / key(f"{name}\0{version}")
        if not folder.is_dir():
            return
        for child in folder.iterdir():
            if child.name != str(keep):
                shutil.rmtree(child, ignore_errors=True)

    def keep_only(self, served: set[Path]) -> None:
        """Remove every snapshot folder but those in ``served``."""
        for folder in self.root.glob("*/*"):
            if folder not in served:
                shutil.rmtree(folder, ignore_errors=True)

    def clear(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
