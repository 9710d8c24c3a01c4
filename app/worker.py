"""A gunicorn worker that keeps connections alive on a single thread.

gunicorn's sync worker closes every connection after one response and waits
for the client's FIN before it takes the next; for a one-row request on one
core that is about a third of the time. gthread keeps connections open, but
hands every request from its poller to a thread pool and back. This worker
does the poller's job and the request's on one thread: it waits on its
listeners and its idle connections together and serves whichever is ready,
one request at a time, as the sync worker does. Model inference holds the GIL,
so more threads in a worker would only queue requests behind a busy one.

A connection belongs to the worker that accepted it, so a long request (a
model load, a large batch) delays the next request on the same connection.
New connections go to a free worker, as with the sync worker: a worker with
requests waiting leaves them to the others for a few milliseconds, and a
worker that accepts one answers its first request at once.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import sys
import time
from datetime import datetime

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers import base

# How long a request may stall mid-read or mid-write before its connection is
# dropped: well inside gunicorn's worker timeout, so the arbiter never has to
# kill a worker for one slow client.
IO_TIMEOUT_FRACTION = 0.5
# Seconds between sweeps for connections kept alive past gunicorn's keepalive.
IDLE_CHECK_INTERVAL = 0.5
# A connection the server ends is half-closed first, and what the client still
# sends is read and dropped, up to this many seconds and bytes: closing with
# unread bytes would make the kernel send a reset, which can destroy the last
# response before the client reads it (RFC 9112, section 9.6).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
# Seconds a worker with requests waiting leaves a new connection to others.
ACCEPT_DEFER = 0.005
# Connections one worker accepts in one turn, at most.
ACCEPT_BURST = 64
# Seconds a new connection's first request is waited for before the
# connection joins the others in the poller.
FIRST_REQUEST_WAIT = 0.005


class Connection:
    """One client connection: its socket, its parser and when it goes idle."""

    __slots__ = ("sock", "client", "server", "parser", "idle_since", "lingering", "drained")

    def __init__(self, sock: socket.socket, client, server, cfg) -> None:
        self.sock = sock
        self.client = client
        self.server = server
        self.parser = http.get_parser(cfg, sock, client)
        self.idle_since = time.monotonic()
        self.lingering = False
        self.drained = 0

    def buffered(self) -> bool:
        """Whether a pipelined request already sits in the parser's buffer,
        where the poller cannot see it."""
        return self.parser.unreader.buf.seek(0, os.SEEK_END) > 0


class KeepAliveWorker(base.Worker):
    """Serves HTTP/1.1 keep-alive connections one request at a time."""

    @classmethod
    def check_config(cls, cfg, log) -> None:
        if cfg.is_ssl:
            raise RuntimeError("app.worker.KeepAliveWorker serves plain HTTP; "
                               "terminate TLS in front of it or use the sync worker")

    def init_process(self) -> None:
        self.poller = select.epoll()
        self.listeners = {listener.fileno(): listener for listener in self.sockets}
        self.connections: dict[int, Connection] = {}
        # Connections with a request waiting, oldest first (a dict as an
        # ordered set). One request is served per turn of the poller, so a
        # request waits behind those that came before it, and no longer.
        self.waiting: dict[Connection, None] = {}
        self.accepting = False
        self.next_idle_check = 0.0
        self.deferred_since: float | None = None
        self.io_timeout = max(1.0, self.timeout * IO_TIMEOUT_FRACTION) if self.timeout else None
        super().init_process()

    def run(self) -> None:
        self.poller.register(self.PIPE[0], select.EPOLLIN)
        for listener in self.sockets:
            listener.setblocking(False)
        self.set_accepting(True)
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

    def turn(self, timeout: float) -> None:
        """Take the new connections (see :meth:`take`) and serve the oldest
        waiting request, waiting up to ``timeout`` seconds for something to do."""
        self.notify()
        pending = []
        for fd, _ in self.poller.poll(0 if self.waiting else timeout):
            conn = self.connections.get(fd)
            if conn is not None and conn.lingering:
                self.drain(conn)
            elif conn is not None:
                self.waiting.setdefault(conn)
            elif fd == self.PIPE[0]:
                self.drain_pipe()
            else:
                pending.append(self.listeners[fd])
        self.take(pending, busy=bool(self.waiting))
        # Before serving, which may take long: readiness is fresh now.
        if time.monotonic() >= self.next_idle_check:
            self.close_idle()
        if self.waiting:
            conn = next(iter(self.waiting))
            del self.waiting[conn]
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
        """On the way out, answer the requests already sent, each with
        ``Connection: close``, within gunicorn's graceful timeout."""
        self.alive = False
        self.set_accepting(False)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        self.turn(0)
        while self.waiting and time.monotonic() < deadline:
            self.turn(0)

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
        first request at once if it comes within ``FIRST_REQUEST_WAIT``: as
        with the sync worker, a worker that takes a connection is free to
        answer it, and other connections go to other workers meanwhile."""
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return False
            raise
        util.close_on_exec(sock)
        sock.settimeout(self.io_timeout)
        conn = Connection(sock, client, listener.getsockname(), self.cfg)
        self.connections[sock.fileno()] = conn
        self.poller.register(sock, select.EPOLLIN)
        if len(self.connections) >= self.cfg.worker_connections:
            self.set_accepting(False)
        ready = select.poll()
        ready.register(sock, select.POLLIN)
        if ready.poll(FIRST_REQUEST_WAIT * 1000):
            self.notify()  # a burst of accepts may serve many first requests in one turn
            self.serve(conn)
        return True

    def serve(self, conn: Connection) -> None:
        if not (self.handle(conn) and self.alive):
            self.linger(conn)
            return
        conn.idle_since = time.monotonic()
        if conn.buffered():
            # A pipelined request the poller cannot see: it waits its turn.
            self.waiting.setdefault(conn)

    def linger(self, conn: Connection) -> None:
        """End a connection without a reset: half-close it, then let the
        poller drain what the client still sends until it closes too."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close(conn)
            return
        conn.lingering = True
        conn.idle_since = time.monotonic()

    def drain(self, conn: Connection) -> None:
        try:
            data = conn.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        conn.drained += len(data)
        if not data or conn.drained > LINGER_BYTES:
            self.close(conn)

    def close_idle(self) -> None:
        """Close connections quiet for longer than gunicorn's ``keepalive``;
        one with a request waiting is not quiet, however long it waited."""
        now = time.monotonic()
        self.next_idle_check = now + IDLE_CHECK_INTERVAL
        idle, lingered = now - self.cfg.keepalive, now - LINGER_SECONDS
        for conn in [c for c in self.connections.values() if c not in self.waiting and
                     c.idle_since < (lingered if c.lingering else idle)]:
            self.close(conn)

    def close(self, conn: Connection) -> None:
        self.connections.pop(conn.sock.fileno(), None)
        self.waiting.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, ValueError):
            pass
        util.close(conn.sock)
        if self.alive and len(self.connections) < self.cfg.worker_connections:
            self.set_accepting(True)

    def handle(self, conn: Connection) -> bool:
        """Serve one request; whether the connection may carry another."""
        req = None
        try:
            req = next(conn.parser)
            if not req:
                return False
            return self.handle_request(req, conn) and bool(
                conn.parser.finish_body(deadline=time.monotonic() + (self.io_timeout or 5.0)))
        except (http.errors.NoMoreData, StopIteration, TimeoutError):
            return False
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
            return False
        except Exception as e:
            self.handle_error(req, conn.sock, conn.client, e)
            return False

    def handle_request(self, req, conn: Connection) -> bool:
        environ: dict = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            respiter = self.wsgi(environ, resp.start_response)
            if resp.status_code == 408:
                # The client stalled mid-body: what is left of it cannot be
                # drained in time, so the answer ends the connection.
                resp.force_close()
            try:
                for item in respiter:
                    resp.write(item)
                resp.close()
            finally:
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            return not resp.should_close()
        except OSError:
            util.reraise(*sys.exc_info())
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
