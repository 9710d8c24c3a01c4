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
model load, a large batch) delays the next request on the same connection;
others go to whichever worker is free, as with the sync worker.
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


class Connection:
    """One client connection: its socket, its parser and when it goes idle."""

    __slots__ = ("sock", "client", "server", "parser", "idle_since")

    def __init__(self, sock: socket.socket, client, server, cfg) -> None:
        self.sock = sock
        self.client = client
        self.server = server
        self.parser = http.get_parser(cfg, sock, client)
        self.idle_since = time.monotonic()

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
        """Take at most one new connection and serve at most one request,
        waiting up to ``timeout`` seconds for something to do."""
        self.notify()
        for fd, _ in self.poller.poll(0 if self.waiting else timeout):
            conn = self.connections.get(fd)
            if conn is not None:
                self.waiting.setdefault(conn)
            elif fd == self.PIPE[0]:
                self.drain_pipe()
            else:
                self.accept(self.listeners[fd])
        if self.waiting:
            conn = next(iter(self.waiting))
            del self.waiting[conn]
            self.serve(conn)
        if time.monotonic() >= self.next_idle_check:
            self.close_idle()

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

    def accept(self, listener) -> None:
        """Take one new connection, if another worker has not. One a turn:
        a busy worker leaves a burst of them to idle ones."""
        if not self.alive:
            return
        try:
            sock, client = listener.accept()
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                return
            raise
        util.close_on_exec(sock)
        sock.settimeout(self.io_timeout)
        conn = Connection(sock, client, listener.getsockname(), self.cfg)
        self.connections[sock.fileno()] = conn
        self.poller.register(sock, select.EPOLLIN)
        if len(self.connections) >= self.cfg.worker_connections:
            self.set_accepting(False)

    def serve(self, conn: Connection) -> None:
        if not (self.handle(conn) and self.alive):
            self.close(conn)
            return
        conn.idle_since = time.monotonic()
        if conn.buffered():
            # A pipelined request the poller cannot see: it waits its turn.
            self.waiting.setdefault(conn)

    def close_idle(self) -> None:
        """Close connections quiet for longer than gunicorn's ``keepalive``;
        one with a request waiting is not quiet, however long it waited."""
        now = time.monotonic()
        self.next_idle_check = now + IDLE_CHECK_INTERVAL
        deadline = now - self.cfg.keepalive
        for conn in [c for c in self.connections.values()
                     if c.idle_since < deadline and c not in self.waiting]:
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
