"""The state folder's own faults, the same for every store: each host keeps
its snapshots, metrics files and locks there, whatever holds the rows."""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from ..errors import DepotError, InsufficientStorage, StateUnavailable

#: free bytes below which the state folder counts as full for readiness: a
#: load needs room for its snapshot, a write room for its journal
FULL_BELOW = 256 << 10
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def problem(folder: Path) -> str | None:
    """Why ``folder`` cannot take Depot's writes now, or None (also when it
    is not made yet: the first write makes it)."""
    try:
        found = os.statvfs(folder)
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"the state folder {folder} cannot be read: {e.strerror}"
    if found.f_flag & os.ST_RDONLY:
        return f"the state folder {folder} is read-only; Depot cannot record loads"
    free = found.f_bavail * found.f_frsize
    if free < FULL_BELOW:
        return f"the state folder {folder} is full ({free >> 10} KiB free); free space there"
    return None


def refusal(folder: Path, errno_: int | None, text: str) -> DepotError | None:
    """The error for a write to ``folder`` refused with ``errno_``: full is
    a 507, read-only a 503; None for any other failure."""
    if errno_ in FULL_ERRNOS:
        return InsufficientStorage(f"the state folder {folder} is full ({text}); "
                                   "free space there, then try again")
    if errno_ == errno.EROFS:
        return StateUnavailable(f"the state folder {folder} is read-only ({text}); "
                                "make it writable, then try again")
    return None


def hold(path: Path) -> None:
    """Wait for an exclusive lock on ``path`` and hold it until this process
    ends, however it ends: the kernel frees it with the process's files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "w")
    fcntl.flock(handle, fcntl.LOCK_EX)
    _held.append(handle)  # kept open: the lock lives with it


_held: list = []
