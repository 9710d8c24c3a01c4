"""Forking safely while other threads work.

gunicorn's master forks a worker whenever one is needed, and its own threads
(the sync thread, the calls workers make to it, the ``/metrics`` port) use
the state store meanwhile. A fork copies every lock as it is at that instant,
but only the forking thread: SQLite holds process-wide mutexes around its
work, so a worker forked while another thread of the master was inside
SQLite would wait forever for a mutex no thread of its own will release.
Calls into such libraries hold :data:`GUARD`, and a fork waits for it.
"""
from __future__ import annotations

import functools
import os
import threading
from typing import Any, Callable, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: held by calls into libraries that are not fork-safe, and across every fork
GUARD = threading.RLock()
os.register_at_fork(before=GUARD.acquire, after_in_parent=GUARD.release,
                    after_in_child=GUARD.release)


def guarded(call: F) -> F:
    """Run ``call`` holding :data:`GUARD`: no fork happens meanwhile."""
    @functools.wraps(call)
    def run(*args: Any, **kwargs: Any) -> Any:
        with GUARD:
            return call(*args, **kwargs)

    return run  # type: ignore[return-value]
