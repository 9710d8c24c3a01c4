"""The multiprocess files' life: a worker's allocated before use, a dead worker's folded in.

gunicorn runs several processes, so the counters live in prometheus-client's
multiprocess files (one set per process, memory-mapped, summed when read).

prometheus-client makes those files by truncating them, which leaves them
sparse: on a full state folder, the first write to a page with no block behind
it is a SIGBUS that kills the worker. So each worker allocates its files first
(:meth:`Files.reserve`); a worker that cannot counts nothing, and serves on.

A dead worker's files are folded into the ``retired`` ones
(:meth:`Files.retire`), so the files stay as many as the live workers. Scrapes
read the folder under a shared lock (:meth:`Files.reading`) that folding takes
alone: a scrape never sees a half-folded state.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
from pathlib import Path
from typing import Iterator

from .names import LAST_MODE

log = logging.getLogger("depot.metrics")

#: the files prometheus_client.values names ``{prefix}_{pid}.db``: one per type
#: of metric Depot declares, gauges by their multiprocess mode
FILE_PREFIXES = ("counter", "histogram", f"gauge_{LAST_MODE}")
#: the pseudo-pid in the names of the files that hold dead workers' numbers
RETIRED = "retired"
#: prometheus-client's first size for a file (mmap_dict._INITIAL_MMAP_SIZE);
#: when full, it doubles it. An all-zero file is a valid empty one.
FILE_SIZE = 1 << 16
#: room kept allocated past what a file uses, more than one label set adds
#: (a model's histograms are ~40 entries of ~250 bytes)
FILE_ROOM = 16 << 10


class Files:
    """The files in the multiprocess folder, and the lock around them.

    With no folder (one process, counting in memory) there are none to keep."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        #: False once this process could not reserve its files: it counts nothing
        self.counting = True

    def reserve(self) -> bool:
        """Allocate this process's files, with room for one more label set; False: it cannot.

        Before prometheus-client maps (or grows) them: called after fork and
        before each new label set. If the state folder has no room, this
        process stops counting, says so once, and serves on."""
        if self.folder is None or not self.counting:
            return self.counting
        try:
            for prefix in FILE_PREFIXES:
                _allocate(self.folder / f"{prefix}_{os.getpid()}.db")
        except OSError as e:
            self.counting = False
            log.warning("worker %d counts no metrics from now on: its files in %s cannot "
                        "be allocated (%s); inference goes on", os.getpid(),
                        self.folder, e.strerror or e)
        return self.counting

    def retire(self, pid: int) -> None:
        """Fold a dead worker's files into the ``retired`` ones, and remove them.

        Counters and histograms are summed, the last-inference gauge kept
        at its maximum: its numbers stay counted, and the files (and the time
        a scrape takes) stay as many as the live workers, however often
        workers are replaced. A scrape never sees a half-folded state."""
        if self.folder is None:
            return
        from prometheus_client.mmap_dict import MmapedDict

        with self._lock(fcntl.LOCK_EX):
            for prefix in FILE_PREFIXES:
                dead = self.folder / f"{prefix}_{pid}.db"
                if not dead.exists():
                    continue
                try:
                    values = list(MmapedDict.read_all_values_from_file(str(dead)))
                    if values:
                        retired = self.folder / f"{prefix}_{RETIRED}.db"
                        _allocate(retired)  # no sparse pages: a full disk is an OSError here
                        kept = MmapedDict(str(retired))
                        try:
                            for key_, value, timestamp, _ in values:
                                old, _ = kept.read_value(key_)
                                kept.write_value(key_, max(old, value) if prefix.startswith(
                                    "gauge") else old + value, timestamp)
                        finally:
                            kept.close()
                    dead.unlink()
                except OSError as e:  # a full state folder: the file stays, still counted
                    log.warning("could not fold %s into the retired counts: %s", dead, e)

    def reading(self) -> contextlib.AbstractContextManager[None]:
        """Held while a scrape reads the folder: scrapes share it."""
        return self._lock(fcntl.LOCK_SH)

    @contextlib.contextmanager
    def _lock(self, how: int) -> Iterator[None]:
        """Scrapes share this lock; folding a dead worker's files takes it alone."""
        assert self.folder is not None
        with open(self.folder / ".lock", "a") as handle:
            fcntl.flock(handle, how)
            yield


def _allocate(path: Path) -> None:
    """Give ``path`` blocks on disk for all it uses and FILE_ROOM more.

    It grows as prometheus-client would grow it (doubling from FILE_SIZE),
    so that growth finds the blocks there. A new file is made aside and renamed
    into place: a scrape never reads an empty one."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        part = path.with_name(f".{path.name}.part")
        fd = os.open(part, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.posix_fallocate(fd, 0, FILE_SIZE)
            os.rename(part, path)
        except OSError:
            os.unlink(part)
            raise
        finally:
            os.close(fd)
        return
    try:
        size = os.fstat(fd).st_size
        used = struct.unpack("i", os.pread(fd, 4, 0))[0] if size >= 4 else 0
        target = max(size, FILE_SIZE)
        while target - used < FILE_ROOM:
            target *= 2
        os.posix_fallocate(fd, 0, target)
    finally:
        os.close(fd)
