"""The gunicorn worker: one thread that keeps connections alive and never waits for a client.

gunicorn's sync worker closes every connection after one response and blocks
on each client's bytes; gthread hands every request from its poller to a
thread pool and back. This worker does the poller's job and the request's on
one thread: whoever has sent a whole request is served, one request at a
time, oldest first, and a slow client costs a socket and a buffer, never
the worker. Model inference holds the GIL, so more threads would only queue
requests behind a busy one.

New connections go to a free worker, as with the sync worker: a worker with
requests waiting leaves them to the others for a few milliseconds, and a
worker that accepts one answers its first request at once. A connection
belongs to the worker that accepted it.

:class:`KeepAliveWorker` is the process's life (start, the master's watch,
the graceful finish), the loop and accepting. The rest has a module each:
a connection's bytes, deadlines and end (:mod:`.connection`), one request
through the app (:mod:`.wsgi_call`), the control calls run in threads
(:mod:`.background`), and which waiting requests share one model call
(:mod:`.grouping`).
"""
from __future__ import annotations

import errno
import os
import resource
import select
import threading
import time
from typing import Protocol

from gunicorn import util
from gunicorn.workers import base

from ..settings import Settings
from .background import CONTROL_PREFIX, ControlCalls
from .connection import Connection, Connections
from .grouping import Grouping
from .wsgi_call import WsgiCall, head_limit

#: seconds a stopping worker waits for the next request on an idle keep-alive
#: connection before it says it is quiet (app/registry/master.py replaces workers so)
RETIRE_GRACE = 1.0
# Seconds between checks of every connection's deadlines.
SWEEP_INTERVAL = 0.25
# Seconds a worker with requests waiting leaves a new connection to others.
ACCEPT_DEFER = 0.005
# Connections one worker accepts in one turn, at most.
ACCEPT_BURST = 64
# Seconds a worker stops accepting when the process is out of descriptors.
DESCRIPTOR_BACKOFF = 0.5
# Descriptors kept free for everything but connections: model files, the
# state database, metrics files, the watcher, logs.
RESERVED_DESCRIPTORS = 64
# How often a worker looks for its master, and how long it then has to
# finish before it exits anyway (a load in hand must not keep the port).
PARENT_CHECK = 0.5
ORPHAN_GRACE = 3.0
#: seconds without a request before a worker writes what it holds; a
#: client that sends one request at a time sends the next sooner
IDLE_WRITE = 0.001
NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def connection_limit(configured: int, is_default: bool) -> int:
    """Connections one worker may hold: what the descriptor limit leaves
    after the descriptors open now and a reserve. gunicorn's default of 1000
    is only a guess, so the limit replaces it; a value set on purpose is
    kept when the descriptors allow it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        open_now = len(os.listdir("/proc/self/fd"))
    except OSError:
        open_now = 32
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    room = max(1, soft - open_now - RESERVED_DESCRIPTORS)
    return room if is_default else max(1, min(configured, room))


class Host(Protocol):
    """What the worker tells the deployment it serves, and asks of it: the
    one seam between gunicorn's side and the rest of Depot."""

    def retiring(self) -> None:
        """The worker has begun to stop: it builds no new model copies."""

    def quiet(self) -> None:
        """The worker takes hardly any new request from now on."""

    def idle(self) -> None:
        """The worker has had nothing to do for IDLE_WRITE seconds since it
        last served: what the app held back (HOLDS_WRITES) is written now."""

    def batch_limit(self, path: str) -> int:
        """How many requests for ``path`` one model call may answer (below
        2: none are grouped); see app/server/grouping.py."""


class KeepAliveWorker(base.Worker):
    """Serves HTTP/1.1 keep-alive connections one whole request at a time."""

    #: the deployment this worker serves, as the worker sees it (set by
    #: app/server/hooks.py once the worker has booted); None: a plain
    #: gunicorn worker, which holds no writes and groups no requests
    host: Host | None = None

    @classmethod
    def check_config(cls, cfg, log) -> None:
        if cfg.is_ssl:
            raise RuntimeError("app.server.worker.KeepAliveWorker serves plain HTTP; "
                               "terminate TLS in front of it or use the sync worker")

    def init_process(self) -> None:
        settings = Settings.from_env()
        cfg = self.cfg
        setting = cfg.settings["worker_connections"]
        self.max_connections = connection_limit(cfg.worker_connections,
                                                setting.value == setting.default)
        self.poller = select.epoll()
        self.listeners = {listener.fileno(): listener for listener in self.sockets}
        self.conns = Connections(
            self.poller, self.log, max_head=head_limit(cfg), max_body=settings.max_body_bytes,
            header_timeout=settings.header_timeout,
            min_body_rate=float(settings.min_body_rate), keepalive=cfg.keepalive,
            write_timeout=max(1.0, self.timeout * 0.5) if self.timeout else 30.0,
            on_closed=self.resume_accepting)
        # The queue the loop serves from, oldest first: the connections' own.
        self.waiting = self.conns.waiting
        self.call = WsgiCall(self)
        self.control_calls = ControlCalls(self.call.respond, self.conns.update)
        self.grouping: Grouping | None = None  # once the hooks are set (run)
        self.accepting = False
        self.accept_paused_until = 0.0
        self.next_sweep = 0.0
        self.deferred_since: float | None = None
        self.unwritten = False  # served since the host was last told it is idle
        super().init_process()

    def run(self) -> None:
        # post_worker_init (app/server/hooks.py) has set the host by now.
        self.grouping = Grouping(self.host.batch_limit if self.host is not None else None,
                                 self.waiting, self.call.respond)
        self.poller.register(self.PIPE[0], select.EPOLLIN)
        self.poller.register(self.control_calls.wake_read, select.EPOLLIN)
        for listener in self.sockets:
            listener.setblocking(False)
        self.set_accepting(True)
        threading.Thread(target=self.watch_parent, name="depot-parent", daemon=True).start()
        try:
            while self.alive:
                self.turn(1.0)
                if self.ppid != os.getppid():
                    self.log.info("Parent changed, shutting down: %s", self)
                    break
            self.finish()
        finally:
            self.conns.close_all()
            self.poller.close()

    def watch_parent(self) -> None:
        """Exit soon after the master dies, even in the middle of a long
        request: an orphan would keep the port, and a restarted master could
        not bind it. A pidfd wakes this thread only then; without one, it
        looks every :data:`PARENT_CHECK` seconds."""
        try:
            parent = os.pidfd_open(self.ppid)
        except (AttributeError, OSError):  # gone already, or an older kernel
            parent = None
        if parent is not None and os.getppid() == self.ppid:
            select.select([parent], [], [])  # readable once the master has exited
        while os.getppid() == self.ppid:
            time.sleep(PARENT_CHECK)
        self.alive = False
        try:
            os.write(self.PIPE[1], b".")  # wake the poller
        except OSError:
            pass
        time.sleep(ORPHAN_GRACE)
        self.log.warning("Master %s is gone; worker %s exits", self.ppid, self.pid)
        os._exit(1)

    def turn(self, timeout: float) -> None:
        """Read what has arrived, take new connections (see :meth:`take`)
        and serve the oldest whole request, waiting up to ``timeout``
        seconds for something to do."""
        self.notify()
        now = time.monotonic()
        conns = self.conns
        by_fd = conns.by_fd
        # With no connection, a sweep has nothing to do: an idle worker
        # wakes once a ``timeout``, not once a SWEEP_INTERVAL.
        due = self.next_sweep if by_fd or not self.accepting else now + timeout
        wait = 0 if self.waiting else max(0.0, min(timeout, due - now))
        if self.unwritten:
            wait = min(wait, IDLE_WRITE)
        ready = self.poller.poll(wait)
        if self.unwritten and not ready and not self.waiting:
            self.unwritten = False
            if self.host is not None:
                self.host.idle()
        pending = []
        for fd, events in ready:
            conn = by_fd.get(fd)
            if conn is not None:
                conns.on_events(conn, events)
            elif fd == self.PIPE[0]:
                self.drain_pipe()
            elif fd == self.control_calls.wake_read:
                self.take_finished()
            else:
                pending.append(self.listeners[fd])
        self.take(pending, busy=bool(self.waiting))
        if time.monotonic() >= self.next_sweep:
            self.sweep()
        if self.waiting:
            conn = next(iter(self.waiting))
            del self.waiting[conn]
            mates = self.grouping.mates(conn)
            if mates:
                self.serve_together([conn, *mates])
            else:
                self.serve(conn)

    def take(self, listeners: list, busy: bool) -> None:
        """Accept the connections waiting, unless this worker has requests
        to serve and other workers may be free: a connection stays with the
        worker that accepted it, and its first request would wait behind
        those. A free worker takes it within microseconds; if none has after
        ``ACCEPT_DEFER`` seconds, this one does."""
        if not listeners:
            self.deferred_since = None
            return
        now = time.monotonic()
        if busy and self.cfg.workers > 1:
            if self.deferred_since is None:
                self.deferred_since = now
            if now - self.deferred_since < ACCEPT_DEFER:
                return
        self.deferred_since = None
        for listener in listeners:
            for _ in range(ACCEPT_BURST):
                if not (self.alive and self.accepting and self.accept(listener)):
                    break

    def finish(self) -> None:
        """On the way out, answer every request already begun, each with
        ``Connection: close``, within gunicorn's graceful timeout. An idle
        keep-alive connection stays open for its next request, answered the
        same way, so a client that sends on it is answered, never reset;
        those still idle at the deadline are closed then. Once none has
        been idle for :data:`RETIRE_GRACE` (or none is left), the worker
        says it is quiet: it takes hardly any new request from then on."""
        self.alive = False
        self.set_accepting(False)
        if self.host is not None:
            self.host.retiring()
        now = time.monotonic()
        deadline = now + self.cfg.graceful_timeout
        grace = min(deadline, now + RETIRE_GRACE)
        quiet = False
        running = self.control_calls.running
        while True:
            self.turn(0)
            idle = [c for c in self.conns.by_fd.values() if not (
                c.lingering or c.inbuf or c.out or c in self.waiting or c in running)]
            busy = running or any(not c.lingering and (c.inbuf or c.out)
                                  for c in self.conns.by_fd.values())
            if not quiet and (not idle or time.monotonic() >= grace):
                quiet = True
                if self.host is not None:
                    self.host.quiet()
            if not (idle or busy) or time.monotonic() >= deadline:
                break
            self.turn(0.05)

    def drain_pipe(self) -> None:
        """Empty the pipe a signal wrote to, which woke the poller."""
        try:
            os.read(self.PIPE[0], 64)
        except BlockingIOError:
            pass

    def set_accepting(self, accepting: bool) -> None:
        if accepting == self.accepting:
            return
        for listener in self.sockets:
            if accepting:
                self.poller.register(listener, select.EPOLLIN)
            else:
                self.poller.unregister(listener)
        self.accepting = accepting

    def accept(self, listener) -> bool:
        """Take one new connection, if another worker has not, and serve its
        first request at once if it is already whole: as with the sync
        worker, a worker that takes a connection is free to answer it. The
        worker never waits for it, so connections that stay silent cost
        nothing but their socket."""
        try:
            sock, client = listener.accept()
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as e:
            if e.errno == errno.ECONNABORTED:
                return False
            if e.errno in NO_DESCRIPTORS:
                self.pause_accepting(e)
                return False
            raise
        util.close_on_exec(sock)
        sock.setblocking(False)
        conn = self.conns.add(sock, client, listener.getsockname())
        if len(self.conns.by_fd) >= self.max_connections:
            self.set_accepting(False)
        conn.receive()
        if conn.inbuf:
            self.conns.advance(conn)
            if conn in self.waiting:
                del self.waiting[conn]
                self.notify()  # a burst of accepts may serve many first requests in one turn
                self.serve(conn)
        return True

    def resume_accepting(self) -> None:
        """Accept again once there is room, unless out of descriptors lately."""
        if (self.alive and not self.accepting and len(self.conns.by_fd) < self.max_connections
                and time.monotonic() >= self.accept_paused_until):
            self.set_accepting(True)

    def pause_accepting(self, error: OSError) -> None:
        """Out of descriptors: stop accepting for a moment, keep serving the
        connections already open, and try again."""
        self.log.warning("Cannot accept connections (%s); pausing %g s with %d open",
                         os.strerror(error.errno), DESCRIPTOR_BACKOFF, len(self.conns.by_fd))
        self.set_accepting(False)
        self.accept_paused_until = time.monotonic() + DESCRIPTOR_BACKOFF

    def serve(self, conn: Connection) -> None:
        """Answer the connection's whole request: a control call in a thread
        of its own (:mod:`.background`), any other here and now."""
        self.unwritten = self.host is not None
        data, framed = conn.take_request()
        req = self.call.parse(conn, data)
        if req is None:
            self.conns.answered(conn, False)
        elif req.path.startswith(CONTROL_PREFIX) and self.control_calls.has_room():
            self.control_calls.start(conn, req, framed)
        else:
            self.conns.answered(conn, self.call.respond(conn, req) and not framed.close)

    def serve_together(self, conns: list[Connection]) -> None:
        """Serve requests for one model at once (:mod:`.grouping`), then
        answer them in order."""
        self.unwritten = self.host is not None
        jobs = []
        for conn in conns:
            data, framed = conn.take_request()
            req = self.call.parse(conn, data)
            if req is None:
                self.conns.answered(conn, False)
            else:
                jobs.append((conn, req, framed))
        keeps = self.grouping.respond_together(jobs)
        for (conn, _, framed), keep in zip(jobs, keeps):
            if conn.sock.fileno() >= 0:
                self.conns.answered(conn, keep and not framed.close)

    def take_finished(self) -> None:
        """Answer the connections whose control call's thread has answered."""
        for conn, keep in self.control_calls.take_finished():
            self.unwritten = self.host is not None  # its access line is held
            if conn.sock.fileno() >= 0:
                self.conns.answered(conn, keep)

    def sweep(self) -> None:
        """Enforce every connection's deadlines (:meth:`Connections.sweep`),
        and hand over to a fresh worker if a control call hangs."""
        now = time.monotonic()
        self.next_sweep = now + SWEEP_INTERVAL
        self.resume_accepting()
        if self.timeout and self.alive and self.control_calls.overrun(now, self.timeout):
            # A control call that hangs holds its model's lock: a fresh
            # worker takes this one's place, and the lock goes with this
            # process, as when the arbiter kills a worker.
            self.log.error("A control call has run for over %g s (gunicorn's "
                           "timeout); replacing worker %s", self.timeout, self.pid)
            self.alive = False
        self.conns.sweep(now)
