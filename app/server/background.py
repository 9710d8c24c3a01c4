"""Control calls on models, each run in a thread beside the poller and handed back when answered.

A connection belongs to the worker that accepted it. A control call on a
model (``/v2/repository/models/...``: a load reads and verifies an artifact,
for seconds or minutes) runs in a thread of its own, so the worker answers
its other connections meanwhile; any other long request (a large batch)
delays the requests queued behind it in the same worker. While its thread
runs, the connection is the thread's (``busy_since``): the poller leaves it
alone, and a pipe wakes the poller when the answer is ready.

A control call that hangs holds its model's lock: once one has run past
gunicorn's ``timeout`` (:meth:`ControlCalls.overrun`), the worker hands over
to a fresh one, and the lock goes with this process, as when the arbiter
kills a worker.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Callable, Iterator

from .connection import Connection
from .framing import Framed

#: the paths of control calls, which run in a thread beside the poller
CONTROL_PREFIX = "/v2/repository/models/"
#: control calls one worker runs at once, at most (more wait their turn
#: in the loop, like any other request)
MAX_BACKGROUND = 4


class ControlCalls:
    """One worker's control calls running in threads, and their way back to the poller.

    ``respond`` runs the app for a request (the worker's
    :meth:`~app.server.wsgi_call.WsgiCall.respond`); ``update`` tells the
    poller what a connection waits for (:meth:`~app.server.connection.Connections.update`).
    """

    def __init__(self, respond: Callable[[Connection, object], bool],
                 update: Callable[[Connection], None]) -> None:
        self.respond = respond
        self.update = update
        self.running: set[Connection] = set()
        self.finished: queue.SimpleQueue[tuple[Connection, bool]] = queue.SimpleQueue()
        # The poller watches wake_read; a thread that has answered writes to it.
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)

    def has_room(self) -> bool:
        return len(self.running) < MAX_BACKGROUND

    def start(self, conn: Connection, req, framed: Framed) -> None:
        """Hand the connection to a thread that answers ``req``."""
        conn.busy_since = time.monotonic()
        self.running.add(conn)
        self.update(conn)
        threading.Thread(target=self.serve_in_background, args=(conn, req, framed),
                         name="depot-control", daemon=True).start()

    def serve_in_background(self, conn: Connection, req, framed: Framed) -> None:
        keep = self.respond(conn, req) and not framed.close
        self.finished.put((conn, keep))
        try:
            os.write(self.wake_write, b".")
        except OSError:
            pass

    def take_finished(self) -> Iterator[tuple[Connection, bool]]:
        """The connections whose thread has answered, each back in the
        poller's hands, with whether the answer keeps it open."""
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while not self.finished.empty():
            conn, keep = self.finished.get()
            self.running.discard(conn)
            conn.busy_since = 0.0
            yield conn, keep

    def overrun(self, now: float, timeout: float) -> bool:
        """Whether a call has run for over ``timeout`` seconds."""
        return any(now - conn.busy_since > timeout for conn in self.running)
