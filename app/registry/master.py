"""The gunicorn master's part in a load: one copy of every model in memory.

Every worker is a fork of the master, so what the master holds when it forks,
each worker shares with it page by page (copy-on-write) instead of holding a
copy of its own. Models loaded at start-up are held once that way; a model
loaded later, in the worker that took the call, would be held once per
worker. So a load on a host run by gunicorn goes like this:

1. The worker that took the call loads and checks the new copy, as ever (so
   a model that crashes or hangs takes down that worker, never the master),
   then lets it go.
2. It asks the master to *stage* that generation: the master loads the same
   snapshot and keeps the copy aside, not yet served.
3. It asks the master to *roll* the workers, a quarter at a time: fresh
   forks start, sharing the staged copy; once they serve, as many old
   workers are stopped the way gunicorn stops them (each answers what it has
   read, and answers the next request on each idle keep-alive connection
   with ``Connection: close``: a client is answered, never reset). The roll
   returns when every old worker has gone quiet that way.
4. Only then does the worker publish the generation. The new workers serve the
   staged copy at once, the old ones take no new requests, and the call
   returns.

The master's own sync thread keeps its copies in line with the store (an
unload, a load on another host). When it had to build a copy itself (a load
on another host), it rolls the workers too, so the copies they built meanwhile
go with them.

Workers reach the master through a Unix socket in the abstract namespace (no
file to clean up), which answers only processes that are its workers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import orjson

from . import cache
from ..errors import DepotError
from ..store import Row, key

log = logging.getLogger("depot.master")

#: seconds a roll waits for the fresh workers to serve, and for the old ones
#: to go quiet, before it goes on regardless
ROLL_WAIT = 60.0
#: seconds a round of a roll waits for the workers it stopped to exit (one
#: that still holds an idle keep-alive connection stays until it closes)
EXIT_WAIT = 2.0
#: seconds a worker waits for the master to stage a copy or roll the workers
CALL_TIMEOUT = 600.0
#: the longest request or answer on the master's socket
MAX_MESSAGE = 16 << 20


class MasterRefused(DepotError):
    """The master could not do what a worker asked (its reason says why)."""


class Stager(Protocol):
    """What the master asks of the registry (app/registry/sync.py): a copy
    of a generation not yet published, kept for the workers it forks next."""

    def stage(self, row: Row) -> None: ...


class Master:
    """Made in the gunicorn master before it forks; every worker holds a
    copy of this object and uses it to reach the master. It is what the
    registry knows as its :class:`~app.registry.sync.WorkerControl`."""

    def __init__(self, arbiter: Any, registry: Stager, folder: Path) -> None:
        self.arbiter = arbiter
        self.registry = registry
        self.pid = os.getpid()
        self.address = f"\0depot-master-{self.pid}-{key(str(folder))}"
        #: one file per worker: ``<pid>.ready`` once it serves, ``<pid>.quiet``
        #: once it is stopping and takes no new requests
        self.folder = folder
        self._rolling = threading.Lock()
        self._roll_began = 0.0

    def in_worker(self) -> bool:
        return os.getpid() != self.pid

    # -- in the master ------------------------------------------------------------

    def serve(self) -> None:
        """Listen for the workers, in a daemon thread of the master."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder.mkdir(parents=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.address)
        listener.listen(64)

        def accept() -> None:
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=self._answer, args=(conn,), daemon=True,
                                 name="depot-master-call").start()

        threading.Thread(target=accept, name="depot-master", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            pid, _, _ = struct.unpack("3i", conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if pid not in self.arbiter.WORKERS:
                log.warning("refused a call on the master's socket from pid %d, "
                            "which is not one of its workers", pid)
                return
            request: dict[str, Any] = {}
            try:
                request = orjson.loads(_receive(conn))
                if request["op"] == "stage":
                    self.registry.stage(Row(**request["row"]))
                elif request["op"] == "roll":
                    self.roll(caller=pid)
                else:
                    raise ValueError(f"no operation {request['op']!r}")
                reply: dict[str, Any] = {"ok": True}
            except Exception as e:  # the worker answers the call with it
                log.warning("the master could not %s: %s", request.get("op", "answer"), e)
                reply = {"error": getattr(e, "message", None) or f"{type(e).__name__}: {e}"}
            conn.sendall(orjson.dumps(reply) + b"\n")

    def roll(self, caller: int = 0) -> None:
        """Replace every worker by a fresh fork. A roll that began after this call was made shares everything staged
        before it, so rolls asked for at once are made once."""
        asked = time.monotonic()
        with self._rolling:
            if self._roll_began > asked:
                return
            self._roll_began = time.monotonic()
            self._replace_workers(caller)

    def roll_soon(self) -> None:
        threading.Thread(target=self.roll, name="depot-roll", daemon=True).start()

    def _replace_workers(self, caller: int) -> None:
        """Replace the workers a quarter at a time (at least one), oldest
        first. Each round starts that many fresh forks; once they serve, it
        stops as many old workers and waits until they have gone quiet and,
        for a moment, until they have exited (all but the caller, which waits
        for the roll). Capacity never drops, and at most a quarter more
        processes than usual exist at once: each holds memory of its own
        until it exits."""
        arbiter = self.arbiter
        old = sorted(arbiter.WORKERS, key=lambda pid: arbiter.WORKERS[pid].age)
        if not old:
            return
        target = arbiter.num_workers
        batch = max(1, -(-target // 4))
        began = time.monotonic()
        cache.trim(force=True)
        for first in range(0, len(old), batch):
            stopping = old[first:first + batch]
            before = set(arbiter.WORKERS)
            # more than the worker count by as many as stop, even while some
            # are still starting (or replace one that crashed): then gunicorn
            # stops exactly those, the oldest, when the count comes back
            arbiter.num_workers = max(target, len(before)) + len(stopping)
            arbiter.wakeup()
            try:
                self._wait("fresh workers to serve", lambda: sum(
                    self._flag(pid, "ready") for pid in list(arbiter.WORKERS)
                    if pid not in before) >= len(stopping))
            finally:
                # Stopped by name: while workers are still starting, the
                # count alone may not reach past gunicorn's worker count.
                for pid in stopping:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGTERM)
                arbiter.num_workers = target
                arbiter.wakeup()
            self._wait("old workers to go quiet", lambda: all(
                pid not in arbiter.WORKERS or self._flag(pid, "quiet") for pid in stopping))
            if first + batch < len(old):
                self._wait("old workers to exit", lambda: not any(
                    pid in arbiter.WORKERS for pid in stopping if pid != caller),
                    EXIT_WAIT, warn=False)  # one holding a keep-alive connection stays
        log.info("replaced %d workers in %.2f s", len(old), time.monotonic() - began)

    def serving_workers(self) -> int:
        """Workers that serve now: started, and not stopping."""
        ready = {p.stem for p in self.folder.glob("*.ready")}
        return len(ready - {p.stem for p in self.folder.glob("*.quiet")})

    def _flag(self, pid: int, name: str) -> bool:
        return (self.folder / f"{pid}.{name}").exists()

    @staticmethod
    def _wait(what: str, done: Any, timeout: float = ROLL_WAIT, warn: bool = True) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                if warn:
                    log.warning("gave up waiting for %s after %g s", what, timeout)
                return
            time.sleep(0.02)

    def worker_gone(self, pid: int) -> None:
        for name in ("ready", "quiet"):
            (self.folder / f"{pid}.{name}").unlink(missing_ok=True)

    # -- in a worker --------------------------------------------------------------

    def worker_ready(self) -> None:
        self._say("ready")

    def worker_quiet(self) -> None:
        self._say("quiet")

    def _say(self, flag: str) -> None:
        """Raise this worker's flag. A state folder that refuses it (read-only,
        full) must not stop the worker: a roll then waits for it in vain, and
        loads are refused meanwhile anyway."""
        try:
            (self.folder / f"{os.getpid()}.{flag}").touch()
        except OSError as e:
            log.warning("could not say this worker is %s: %s", flag, e)

    def stage(self, row: Row) -> None:
        """Have the master load ``row``'s copy from this host's snapshot."""
        self._call({"op": "stage", "row": dataclasses.asdict(row)})

    def replace_workers(self) -> None:
        self._call({"op": "roll"})

    def _call(self, request: dict[str, Any]) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.settimeout(CALL_TIMEOUT)
                conn.connect(self.address)
                conn.sendall(orjson.dumps(request) + b"\n")
                reply = orjson.loads(_receive(conn))
        except (OSError, ValueError) as e:
            raise MasterRefused(f"the server's master did not answer: {e}") from None
        if "error" in reply:
            raise MasterRefused(reply["error"])


def _receive(conn: socket.socket) -> bytes:
    """One newline-terminated message."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("message too long")
    return bytes(data)
