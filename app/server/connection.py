"""A client connection and the set of them one worker holds: buffers, deadlines, how each ends.

The worker reads whatever each connection has delivered, without waiting for
more, and keeps it in that connection's buffer; a request goes to the app
only once it is whole (:mod:`app.server.framing` says when), and the answer
is written as far as the client takes it, the rest when it can take more. A
slow client therefore costs a socket and a buffer, never the worker.

Deadlines apply to whole requests: the head must be in within
``DEPOT_HEADER_TIMEOUT`` seconds of its first byte, and the body must keep up
``DEPOT_MIN_BODY_RATE`` bytes a second after that; a client past either gets
a 408 and is dropped. Idle connections close after gunicorn's ``keepalive``.
A connection the server ends is half-closed and drained first (see
:data:`LINGER_SECONDS`), so its last answer is never lost to a reset.

:class:`Connection` is one connection's state, as gunicorn's ``TConn`` is in
gthread; :class:`Connections` is the set, with what the poller is told about
each and the sweep that enforces the deadlines. Neither runs the app.
"""
from __future__ import annotations

import select
import socket
import time
from typing import Callable

from gunicorn import util

from runtimes.base import Failure

from ..errors import Malformed, RequestTimeout
from .answers import error_answer
from .framing import Framed, RequestFramer

# Bytes asked of the kernel per recv(), and read from one connection per turn
# at most, so one fast sender cannot keep the worker from the others.
RECV_SIZE = 64 << 10
READ_PER_TURN = 4 << 20
# A connection the server ends is half-closed first, and what the client still
# sends is read and dropped, up to this many seconds and bytes: closing with
# unread bytes would make the kernel send a reset, which can destroy the last
# response before the client reads it (RFC 9112, section 9.6).
LINGER_SECONDS = 2.0
LINGER_BYTES = 1 << 20
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


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

    def peer(self) -> str:
        """The client's address, for log lines."""
        client = self.client
        return f"{client[0]}:{client[1]}" if isinstance(client, tuple) else str(client)


class Connections:
    """The open connections of one worker, and those with a whole request waiting.

    It tells the poller what each connection waits for, reads and writes as
    the poller says, and ends connections: refused, overdue, idle, or done.
    ``on_closed`` is called after each close (the worker may accept again).
    """

    def __init__(self, poller: select.epoll, log, *, max_head: int, max_body: int,
                 header_timeout: float, min_body_rate: float, keepalive: float,
                 write_timeout: float, on_closed: Callable[[], None]) -> None:
        self.poller = poller
        self.log = log
        self.max_head = max_head
        self.max_body = max_body
        self.read_limit = max_head + max_body
        self.header_timeout = header_timeout
        self.min_body_rate = min_body_rate
        self.keepalive = keepalive
        self.write_timeout = write_timeout
        self.on_closed = on_closed
        self.by_fd: dict[int, Connection] = {}
        # Connections with a whole request waiting, oldest first (a dict as
        # an ordered set). One request is served per turn of the poller, so
        # a request waits behind those that came before it, and no longer.
        self.waiting: dict[Connection, None] = {}

    def add(self, sock: socket.socket, client, server) -> Connection:
        """A connection just accepted (non-blocking), waiting for input."""
        conn = Connection(sock, client, server, RequestFramer(self.max_head, self.max_body))
        self.by_fd[sock.fileno()] = conn
        self.poller.register(sock, select.EPOLLIN)
        conn.mask = select.EPOLLIN
        return conn

    def on_events(self, conn: Connection, events: int) -> None:
        """Act on what the poller says of a connection: drain a lingering
        one; write first, then read and look for a whole request."""
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
                self.refuse(conn, e)
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

    def answered(self, conn: Connection, keep: bool) -> None:
        """Send the answer just made; then end the connection, or look for
        its next request, which may be whole already (pipelined). ``keep``
        is what the answer told the client: a worker told to stop while it
        made a keep-alive answer keeps the connection for the next request
        (the worker's ``finish`` answers it with ``Connection: close``)."""
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

    def refuse(self, conn: Connection, error: Failure) -> None:
        """Answer a request that cannot be served with a JSON error, and end
        the connection: where its next request would start is unknown."""
        self.log.warning("Refused request from %s: %d %s", conn.peer(), error.status,
                         error.message)
        conn.inbuf.clear()
        conn.framed = None
        conn.out += error_answer(error)
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

    def sweep(self, now: float) -> None:
        """Enforce every connection's deadlines as of ``now``: the request
        being received (408), the answer being written, keep-alive and
        linger. A connection whose request runs in a thread is its thread's."""
        idle, lingered = now - self.keepalive, now - LINGER_SECONDS
        for conn in list(self.by_fd.values()):
            if conn.busy_since:
                continue
            elif conn.lingering:
                if conn.idle_since < lingered:
                    self.close(conn)
            elif conn.out:
                if now - conn.written_at > self.write_timeout:
                    self.log.info("Dropped %s: it took no output for %g s",
                                  conn.peer(), self.write_timeout)
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
                    self.refuse(conn, RequestTimeout(why))
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
        if self.by_fd.pop(conn.sock.fileno(), None) is None:
            return
        self.waiting.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (OSError, ValueError):
            pass
        util.close(conn.sock)
        self.on_closed()

    def close_all(self) -> None:
        for conn in list(self.by_fd.values()):
            self.close(conn)
