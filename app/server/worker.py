"""A gunicorn worker that keeps connections alive on a single thread, and
never waits for a client.

gunicorn's sync worker closes every connection after one response and blocks
on each client's bytes; gthread hands every request from its poller to a
thread pool and back. This worker does the poller's job and the request's on
one thread. It reads whatever each connection has delivered, without waiting
for more, and keeps it in that connection's buffer; a request goes to the app
only once it is whole (:mod:`app.framing` says when), and the answer is
written as far as the client takes it, the rest when it can take more. A slow
client therefore costs a socket and a buffer, never the worker: whoever is
whole is served, one request at a time, oldest first. Model inference holds
the GIL, so more threads would only queue requests behind a busy one.

Deadlines apply to whole requests: the head must be in within
``DEPOT_HEADER_TIMEOUT`` seconds of its first byte, and the body must keep up
``DEPOT_MIN_BODY_RATE`` bytes a second after that; a client past either gets
a 408 and is dropped. Idle connections close after gunicorn's ``keepalive``.

A connection belongs to the worker that accepted it. Control calls on
models (``/v2/repository/models/...``: a load reads and verifies an artifact,
for seconds or minutes) run in a thread beside the poller, so the worker
answers its other connections meanwhile; any other long request (a large
batch) delays the requests queued behind it in the same worker. New
connections go to a free worker, as with the sync worker: a worker with
requests waiting leaves them to the others for a few milliseconds, and a
worker that accepts one answers its first request at once.
"""
from __future__ import annotations

import errno
import os
import queue
import resource
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Callable

import orjson
from gunicorn import http, util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.workers import base

from ..environ import HOLDS_WRITES
from ..settings import Settings
from ..v2 import batching
from .framing import Framed, Malformed, RequestFramer

# Bytes asked of the kernel per recv(), and read from one connection per turn
# at most, so one fast sender cannot keep the worker from the others.
RECV_SIZE = 64 << 10
READ_PER_TURN = 4 << 20
#: seconds a stopping worker waits for the next request on an idle keep-alive
#: connection before it says it is quiet (app/registry/master.py replaces workers so)
RETIRE_GRACE = 1.0
# A connection the server ends is half-closed first, and what the client still
# sends is read and dropped, up to this many seconds and bytes: closing with
# unread bytes would make the kernel send a reset, which can destroy the last
# response before the client reads it (RFC 9112, section 9.6).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
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
# Requests that may take seconds or minutes (a model load reads and verifies
# the artifact) run in a thread beside the poller, so the worker goes on
# serving its other connections meanwhile; at most this many at once.
BACKGROUND_PREFIX = "/v2/repository/models/"
MAX_BACKGROUND = 4
#: requests one model call answers at most, whatever a model's settings say
MAX_BATCH = 64
#: bytes of requests (head and body) one model call answers at most. A
#: model call's fixed cost dominates small requests, which are what
#: batching is for; past ~20 rows of 100 values the rows cost more than the
#: call, and a larger group would only hold back its first answers (measured:
#: p99 rose 20-40% when 64-row requests were grouped by 16)
MAX_BATCH_BYTES = 16 << 10
#: seconds without a request before a worker writes what it holds; a
#: client that sends one request at a time sends the next sooner
IDLE_WRITE = 0.001
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
NO_DESCRIPTORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# gunicorn's parse errors that are not a plain 400.
STATUS_OF_PARSE_ERROR = {
    http_errors.LimitRequestLine: 414,
    http_errors.LimitRequestHeaders: 431,
    http_errors.UnsupportedTransferCoding: 501,
    http_errors.ExpectationFailed: 417,
    http_errors.ForbiddenProxyRequest: 403,
    http_errors.ConfigurationProblem: 500,
}
REASONS = {400: "Bad Request", 403: "Forbidden", 408: "Request Timeout",
           413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed",
           431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented"}


def error_response(status: int, message: str) -> bytes:
    """A complete JSON error answer that ends its connection."""
    body = orjson.dumps({"error": message})
    return (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n\r\n").encode("latin-1") + body


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


class Connection:
    """One client connection: what it has sent that is not served yet, what
    is still to be written to it, and the clock of its current request.

    gunicorn's response writes to it as if it were the socket: the bytes
    join :attr:`out`, and the worker sends them when the socket takes them.
    """

    __slots__ = ("sock", "client", "server", "inbuf", "out", "framer", "framed",
                 "started", "head_at", "idle_since", "written_at", "eof", "closing",
                 "lingering", "drained", "mask", "busy_since")

    def __init__(self, sock: socket.socket, client, server, framer: RequestFramer) -> None:
        now = time.monotonic()
        self.sock = sock
        self.client = client
        self.server = server
        self.inbuf = bytearray()
        self.out = bytearray()
        self.framer = framer
        self.framed: Framed | None = None
        self.started = now      # when the current request's first byte came
        self.head_at = 0.0      # when its head was whole (0: not yet)
        self.idle_since = now
        self.written_at = now
        self.eof = False        # the client has closed its side
        self.closing = False    # end the connection once `out` is written
        self.lingering = False
        self.drained = 0
        self.mask = 0
        self.busy_since = 0.0   # when a request of it began in a thread (0: none)

    # -- what gunicorn's response calls -----------------------------------

    def sendall(self, data: bytes) -> None:
        self.out += data

    def send(self, data: bytes) -> int:
        """gunicorn sends ``100 Continue`` when it parses a request that asks
        for it; by then the body is all here, and the framing step has sent
        one if the client was waiting for it."""
        if data != CONTINUE:
            self.out += data
        return len(data)

    # -- reading ------------------------------------------------------------

    def receive(self) -> None:
        """Read what the kernel holds for this connection, without waiting."""
        got = 0
        while got < READ_PER_TURN:
            try:
                data = self.sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:
                self.eof = True
                return
            if not self.inbuf:
                self.started = time.monotonic()
            self.inbuf += data
            got += len(data)
            if len(data) < RECV_SIZE:
                return  # the kernel had no more; the poller says when it has

    def frame(self) -> Framed | None:
        """The first request buffered, once it is whole (raises Malformed)."""
        if self.framed is None and self.inbuf:
            self.framed = self.framer.feed(self.inbuf)
            if self.framed is None and self.framer.in_body and not self.head_at:
                self.head_at = time.monotonic()
                if self.framer.expects_continue:
                    self.out += CONTINUE
        return self.framed

    def take_request(self) -> tuple[bytes, Framed]:
        framed = self.framed
        assert framed is not None
        if framed.length == len(self.inbuf):
            data = bytes(self.inbuf)
            self.inbuf.clear()
        else:
            data = bytes(self.inbuf[:framed.length])
            del self.inbuf[:framed.length]
        self.framed = None
        self.framer.reset()
        self.started = time.monotonic()
        self.head_at = 0.0
        return data, framed

    def overdue(self, now: float, header_timeout: float, min_rate: float) -> str | None:
        """Why the request being received has run out of time, if it has."""
        if self.framed is not None or not self.inbuf:
            return None
        if not self.head_at:
            if now - self.started > header_timeout:
                return (f"the request head was not complete after {header_timeout:g} s "
                        "(DEPOT_HEADER_TIMEOUT)")
            return None
        allowed = header_timeout + self.framer.body_received(len(self.inbuf)) / min_rate
        if now - self.head_at > allowed:
            return (f"the request body arrived slower than {min_rate:g} bytes/s "
                    "(DEPOT_MIN_BODY_RATE)")
        return None

    # -- writing ------------------------------------------------------------

    def flush(self) -> bool:
        """Write what the socket takes now; whether everything is written.
        Raises OSError when the client has gone."""
        while self.out:
            try:
                sent = self.sock.send(self.out)
            except (BlockingIOError, InterruptedError):
                return False
            del self.out[:sent]
            self.written_at = time.monotonic()
        return True

    def wanted(self, read_limit: int) -> int:
        """The poller events this connection waits for now: output first (a
        client that does not read its answers is not read from either), and
        no more input while a full request's worth is buffered."""
        if self.busy_since:
            return 0  # its thread owns it until the answer is ready
        if self.out and not self.lingering:
            return select.EPOLLOUT
        if self.eof or len(self.inbuf) > read_limit:
            return 0
        return select.EPOLLIN

    def idle_has_data(self) -> bool:
        """Whether bytes arrived since the poller last looked: a connection
        the sweep finds idle may have been written to during a long request."""
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # let the read find out what happened


class BufferedResponse(wsgi.Response):
    """gunicorn's response, minus sendfile: the body joins the connection's
    output buffer like everything else."""

    def can_sendfile(self) -> bool:
        return False


class KeepAliveWorker(base.Worker):
    """Serves HTTP/1.1 keep-alive connections one whole request at a time."""

    #: called when the worker starts to stop, and once it takes hardly any
    #: new request (gunicorn.conf.py sets them)
    on_retiring: Callable[[], None] | None = None
    on_quiet: Callable[[], None] | None = None
    #: called once the worker has had nothing to do for IDLE_WRITE seconds
    #: since it last served: what the app held back (HOLDS_WRITES) is
    #: written then
    on_idle: Callable[[], None] | None = None
    #: how many requests for a path one model call may answer (below 2:
    #: none are grouped); see :meth:`batch_mates` and app/v2/batching.py
    batch_limit: Callable[[str], int] | None = None

    @classmethod
    def check_config(cls, cfg, log) -> None:
        if cfg.is_ssl:
            raise RuntimeError("app.server.worker.KeepAliveWorker serves plain HTTP; "
                               "terminate TLS in front of it or use the sync worker")

    def init_process(self) -> None:
        settings = Settings.from_env()
        self.header_timeout = settings.header_timeout
        self.min_body_rate = float(settings.min_body_rate)
        self.max_body = settings.max_body_bytes
        cfg = self.cfg
        self.max_head = (cfg.limit_request_line or 8190) + \
            (cfg.limit_request_fields or 100) * ((cfg.limit_request_field_size or 8190) + 2) + 4
        self.read_limit = self.max_head + self.max_body
        self.write_timeout = max(1.0, self.timeout * 0.5) if self.timeout else 30.0
        setting = cfg.settings["worker_connections"]
        self.max_connections = connection_limit(cfg.worker_connections,
                                                setting.value == setting.default)
        self.poller = select.epoll()
        self.listeners = {listener.fileno(): listener for listener in self.sockets}
        self.connections: dict[int, Connection] = {}
        # Connections with a whole request waiting, oldest first (a dict as
        # an ordered set). One request is served per turn of the poller, so
        # a request waits behind those that came before it, and no longer.
        self.waiting: dict[Connection, None] = {}
        self.accepting = False
        self.accept_paused_until = 0.0
        self.next_sweep = 0.0
        self.deferred_since: float | None = None
        # Connections whose request runs in a thread, and the pipe by which
        # those threads hand them back to the poller.
        self.background: set[Connection] = set()
        self.finished: queue.SimpleQueue[tuple[Connection, bool]] = queue.SimpleQueue()
        self.wake_read, self.wake_write = os.pipe()
        os.set_blocking(self.wake_read, False)
        self.unwritten = False  # served since on_idle was last called
        self.batch_pool: ThreadPoolExecutor | None = None  # made on first use
        self.batch_limits: dict[bytes, tuple[float, int]] = {}  # request line -> (until, limit)
        super().init_process()

    def run(self) -> None:
        self.poller.register(self.PIPE[0], select.EPOLLIN)
        self.poller.register(self.wake_read, select.EPOLLIN)
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
            for conn in list(self.connections.values()):
                self.close(conn)
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
        # With no connection, a sweep has nothing to do: an idle worker
        # wakes once a ``timeout``, not once a SWEEP_INTERVAL.
        due = self.next_sweep if self.connections or not self.accepting else now + timeout
        wait = 0 if self.waiting else max(0.0, min(timeout, due - now))
        if self.unwritten:
            wait = min(wait, IDLE_WRITE)
        ready = self.poller.poll(wait)
        if self.unwritten and not ready and not self.waiting:
            self.unwritten = False
            if self.on_idle is not None:
                self.on_idle()
        pending = []
        for fd, events in ready:
            conn = self.connections.get(fd)
            if conn is not None:
                self.on_events(conn, events)
            elif fd == self.PIPE[0]:
                self.drain_pipe()
            elif fd == self.wake_read:
                self.take_finished()
            else:
                pending.append(self.listeners[fd])
        self.take(pending, busy=bool(self.waiting))
        if time.monotonic() >= self.next_sweep:
            self.sweep()
        if self.waiting:
            conn = next(iter(self.waiting))
            del self.waiting[conn]
            mates = self.batch_mates(conn)
            if mates:
                self.serve_together([conn, *mates])
            else:
                self.serve(conn)

    def on_events(self, conn: Connection, events: int) -> None:
        if conn.busy_since:
            return  # its thread owns it; what happened is seen when it is back
        if conn.lingering:
            self.drain(conn)
            return
        if events & select.EPOLLOUT:
            self.write(conn)
            if conn.sock.fileno() < 0 or conn.lingering:
                return
        if events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            conn.receive()
            self.advance(conn)

    def advance(self, conn: Connection) -> None:
        """Queue the connection if its next request is whole; refuse it if
        it can never be; close it if the client left half-way."""
        if not conn.out or conn.framed is not None:
            try:
                framed = conn.frame()
            except Malformed as e:
                self.refuse(conn, e.status, e.message)
                return
            if framed is not None:
                self.waiting.setdefault(conn)
            elif conn.eof:
                self.close(conn)
                return
            elif conn.out:  # 100 Continue
                self.write(conn)
                return
        self.update(conn)

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
        if self.on_retiring is not None:
            self.on_retiring()
        now = time.monotonic()
        deadline = now + self.cfg.graceful_timeout
        grace = min(deadline, now + RETIRE_GRACE)
        quiet = False
        while True:
            self.turn(0)
            idle = [c for c in self.connections.values() if not (
                c.lingering or c.inbuf or c.out or c in self.waiting or c in self.background)]
            busy = self.background or any(not c.lingering and (c.inbuf or c.out)
                                          for c in self.connections.values())
            if not quiet and (not idle or time.monotonic() >= grace):
                quiet = True
                if self.on_quiet is not None:
                    self.on_quiet()
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
        conn = Connection(sock, client, listener.getsockname(),
                          RequestFramer(self.max_head, self.max_body))
        self.connections[sock.fileno()] = conn
        self.poller.register(sock, select.EPOLLIN)
        conn.mask = select.EPOLLIN
        if len(self.connections) >= self.max_connections:
            self.set_accepting(False)
        conn.receive()
        if conn.inbuf:
            self.advance(conn)
            if conn in self.waiting:
                del self.waiting[conn]
                self.notify()  # a burst of accepts may serve many first requests in one turn
                self.serve(conn)
        return True

    def resume_accepting(self) -> None:
        """Accept again once there is room, unless out of descriptors lately."""
        if (self.alive and not self.accepting and len(self.connections) < self.max_connections
                and time.monotonic() >= self.accept_paused_until):
            self.set_accepting(True)

    def pause_accepting(self, error: OSError) -> None:
        """Out of descriptors: stop accepting for a moment, keep serving the
        connections already open, and try again."""
        self.log.warning("Cannot accept connections (%s); pausing %g s with %d open",
                         os.strerror(error.errno), DESCRIPTOR_BACKOFF, len(self.connections))
        self.set_accepting(False)
        self.accept_paused_until = time.monotonic() + DESCRIPTOR_BACKOFF

    def serve(self, conn: Connection) -> None:
        self.unwritten = self.on_idle is not None
        data, framed = conn.take_request()
        req = self.parse(conn, data)
        if req is None:
            self.answered(conn, False)
        elif req.path.startswith(BACKGROUND_PREFIX) and len(self.background) < MAX_BACKGROUND:
            conn.busy_since = time.monotonic()
            self.background.add(conn)
            self.update(conn)
            threading.Thread(target=self.serve_in_background, args=(conn, req, framed),
                             name="depot-control", daemon=True).start()
        else:
            self.answered(conn, self.respond(conn, req) and not framed.close)

    def batch_mates(self, conn: Connection) -> list[Connection]:
        """The waiting connections whose request has the same request line
        as ``conn``'s, if that is an inference the app batches: the oldest
        first, as many as one call may answer with ``conn``'s (the model's
        limit, and :data:`MAX_BATCH_BYTES`). Only requests already whole
        are grouped; none is waited for."""
        if self.batch_limit is None or not self.waiting:
            return []
        end = conn.inbuf.find(b"\r\n", 0, 8192)
        line = bytes(conn.inbuf[:end + 2]) if end > 0 else b""
        limit = self.batch_limit_of(line)
        if limit < 2:
            return []
        mates: list[Connection] = []
        room = MAX_BATCH_BYTES - conn.framed.length if conn.framed else 0
        for other in self.waiting:
            if len(mates) + 1 >= limit or room <= 0:
                break
            if other.inbuf.startswith(line) and other.framed.length <= room:
                mates.append(other)
                room -= other.framed.length
        for other in mates:
            del self.waiting[other]
        return mates

    def batch_limit_of(self, line: bytes) -> int:
        """The app's batch limit for a request line (0 unless it is an
        inference), asked at most once a second (the answer is a registry
        lookup; a load's new limit applies within the second, and no answer
        depends on it)."""
        now = time.monotonic()
        known = self.batch_limits.get(line)
        if known is not None and known[0] > now:
            return known[1]
        if len(self.batch_limits) >= 1024:  # clients choose the paths
            self.batch_limits.clear()
        limit = 0
        if line.startswith(b"POST "):
            path = line.split(b" ", 2)[1].split(b"?", 1)[0]
            if path.endswith(b"/infer"):
                assert self.batch_limit is not None
                limit = min(self.batch_limit(path.decode("latin-1")), MAX_BATCH)
        self.batch_limits[line] = (now + 1.0, limit)
        return limit

    def serve_together(self, conns: list[Connection]) -> None:
        """Serve requests for one model at once, each through the app in a
        thread of its own (the first in this one), with a seat in one
        batch, where their inputs meet for one model call; then answer
        them in order."""
        self.unwritten = self.on_idle is not None
        jobs = []
        for conn in conns:
            data, framed = conn.take_request()
            req = self.parse(conn, data)
            if req is None:
                self.answered(conn, False)
            else:
                jobs.append((conn, req, framed))
        seats = batching.Batch(len(jobs)).seats()
        if self.batch_pool is None:
            self.batch_pool = ThreadPoolExecutor(MAX_BATCH - 1, thread_name_prefix="depot-batch")
        others = [self.batch_pool.submit(self.respond_seated, conn, req, seat)
                  for (conn, req, _), seat in zip(jobs[1:], seats[1:])]
        keeps = [self.respond_seated(jobs[0][0], jobs[0][1], seats[0])] if jobs else []
        keeps += [future.result() for future in others]
        for (conn, _, framed), keep in zip(jobs, keeps):
            if conn.sock.fileno() >= 0:
                self.answered(conn, keep and not framed.close)

    def respond_seated(self, conn: Connection, req, seat: batching.Seat) -> bool:
        try:
            return self.respond(conn, req, seat)
        finally:
            seat.leave()  # the others wait no longer for a request that did not infer

    def serve_in_background(self, conn: Connection, req, framed: Framed) -> None:
        keep = self.respond(conn, req) and not framed.close
        self.finished.put((conn, keep))
        try:
            os.write(self.wake_write, b".")
        except OSError:
            pass

    def take_finished(self) -> None:
        """Take back the connections whose thread has answered."""
        try:
            while os.read(self.wake_read, 4096):
                pass
        except BlockingIOError:
            pass
        while not self.finished.empty():
            conn, keep = self.finished.get()
            self.background.discard(conn)
            conn.busy_since = 0.0
            self.unwritten = self.on_idle is not None  # its access line is held
            if conn.sock.fileno() >= 0:
                self.answered(conn, keep)

    def answered(self, conn: Connection, keep: bool) -> None:
        """Send the answer just made; then end the connection, or look for
        its next request, which may be whole already (pipelined). ``keep``
        is what the answer told the client: a worker told to stop while it
        made a keep-alive answer keeps the connection for the next request
        (:meth:`finish` answers it with ``Connection: close``)."""
        conn.idle_since = time.monotonic()
        if not keep:
            conn.closing = True
        self.write(conn)
        if keep and conn.sock.fileno() >= 0:
            self.advance(conn)

    def write(self, conn: Connection) -> None:
        """Send what the client takes; end the connection once everything
        is written, if it is to end."""
        try:
            done = conn.flush()
        except OSError:
            self.close(conn)
            return
        if done and conn.closing:
            self.linger(conn)
        else:
            self.update(conn)

    def refuse(self, conn: Connection, status: int, message: str) -> None:
        """Answer a request that cannot be served with a JSON error, and end
        the connection: where its next request would start is unknown."""
        self.log.warning("Refused request from %s: %d %s", self.peer(conn), status, message)
        conn.inbuf.clear()
        conn.framed = None
        conn.out += error_response(status, message)
        conn.closing = True
        self.write(conn)

    def update(self, conn: Connection) -> None:
        """Tell the poller what this connection now waits for."""
        mask = select.EPOLLIN if conn.lingering else conn.wanted(self.read_limit)
        if mask == conn.mask:
            return
        try:
            self.poller.modify(conn.sock, mask)
        except (OSError, ValueError):
            self.close(conn)
            return
        conn.mask = mask

    def sweep(self) -> None:
        """Enforce every connection's deadlines: the request being received
        (408), the answer being written, keep-alive and linger."""
        now = time.monotonic()
        self.next_sweep = now + SWEEP_INTERVAL
        self.resume_accepting()
        idle, lingered = now - self.cfg.keepalive, now - LINGER_SECONDS
        for conn in list(self.connections.values()):
            if conn.busy_since:
                if self.timeout and now - conn.busy_since > self.timeout and self.alive:
                    # A control call that hangs holds its model's lock: a
                    # fresh worker takes this one's place, and the lock goes
                    # with this process, as when the arbiter kills a worker.
                    self.log.error("A control call has run for over %g s (gunicorn's "
                                   "timeout); replacing worker %s", self.timeout, self.pid)
                    self.alive = False
            elif conn.lingering:
                if conn.idle_since < lingered:
                    self.close(conn)
            elif conn.out:
                if now - conn.written_at > self.write_timeout:
                    self.log.info("Dropped %s: it took no output for %g s",
                                  self.peer(conn), self.write_timeout)
                    self.close(conn)
            elif conn in self.waiting:
                continue
            elif conn.overdue(now, self.header_timeout, self.min_body_rate) is not None:
                # The worker may have been busy while the client sent the
                # rest: only bytes that truly have not come count against it.
                conn.receive()
                self.advance(conn)
                if conn in self.waiting or conn.lingering or conn.sock.fileno() < 0:
                    continue
                why = conn.overdue(now, self.header_timeout, self.min_body_rate)
                if why is not None:
                    self.refuse(conn, 408, why)
            elif not conn.inbuf and conn.idle_since < idle:
                if conn.idle_has_data():
                    conn.receive()  # written to while this worker was busy: not idle
                    self.advance(conn)
                else:
                    self.linger(conn)

    def linger(self, conn: Connection) -> None:
        """End a connection without a reset: half-close it, then let the
        poller drain what the client still sends until it closes too."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        conn.lingering = True
        conn.inbuf.clear()
        conn.idle_since = time.monotonic()
        self.waiting.pop(conn, None)
        self.update(conn)

    def drain(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained > LINGER_BYTES:
            self.close(conn)

    def close(self, conn: Connection) -> None:
        if self.connections.pop(conn.sock.fileno(), None) is None:
            return
        self.waiting.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, ValueError):
            pass
        util.close(conn.sock)
        self.resume_accepting()

    @staticmethod
    def peer(conn: Connection) -> str:
        client = conn.client
        return f"{client[0]}:{client[1]}" if isinstance(client, tuple) else str(client)

    # -- one request --------------------------------------------------------

    def parse(self, conn: Connection, data: bytes):
        """gunicorn's request for the bytes of one whole request; None when
        they are not one (the error is answered)."""
        try:
            return next(http.RequestParser(self.cfg, [data], conn.client))
        except (http_errors.NoMoreData, StopIteration):
            return None
        except Exception as e:
            self.handle_error(None, conn, conn.client, e)
            return None

    def respond(self, conn: Connection, req, seat: batching.Seat | None = None) -> bool:
        """Run the app for one request; whether the connection may carry another."""
        try:
            return self.handle_request(req, conn, seat)
        except StopIteration:
            return False
        except Exception as e:
            self.handle_error(req, conn, conn.client, e)
            return False

    def handle_request(self, req, conn: Connection, seat: batching.Seat | None = None) -> bool:
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn, conn.client, conn.server, self.cfg,
                                        response_class=BufferedResponse)
            environ[HOLDS_WRITES] = self.on_idle is not None
            if seat is not None:
                environ[batching.SEAT] = seat
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            try:
                for item in respiter:
                    resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # Half a response is out: the connection cannot carry a 500.
                self.log.exception("Error handling request")
                raise StopIteration()
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's parse errors as Depot's JSON errors, with the status
        gunicorn gives them; a traceback only for what is not the client's."""
        if isinstance(exc, http_errors.ParseException) and not isinstance(
                exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)):
            status = next((code for kind, code in STATUS_OF_PARSE_ERROR.items()
                           if isinstance(exc, kind)), 400)
            message = f"{type(exc).__name__}: {exc}"
            self.log.warning("Invalid request from %s: %s", addr and addr[0], message)
        else:
            status, message = 500, "internal error"
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
        if req is not None:
            environ = wsgi.default_environ(req, client, self.cfg)
            resp = wsgi.Response(req, client, self.cfg)
            resp.status = f"{status} {REASONS.get(status, 'Error')}"
            self.log.access(resp, req, environ, datetime.now() - datetime.now())
        client.sendall(error_response(status, message))
