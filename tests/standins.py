"""Stand-ins for what the server's parts get from gunicorn, so that a
connection, a request's call through the app and the grouping of requests
can be tested in-process: a worker with gunicorn's default settings, a log
that keeps what it is told, and connections over ``socket.socketpair()``."""
from __future__ import annotations

import select
import socket
from types import SimpleNamespace
from typing import Any, Callable

from gunicorn.config import Config

from app.server.connection import Connection, Connections
from app.server.framing import RequestFramer
from app.server.wsgi_call import WsgiCall, head_limit

#: a client address, as accept() gives it
CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 8080)
MAX_BODY = 1 << 16


class Log:
    """gunicorn's logger as the server calls it; keeps the lines."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []
        self.access_lines: list[str] = []

    def _keep(self, level: str) -> Callable[..., None]:
        return lambda msg, *args, **kw: self.lines.append((level, msg % args if args else msg))

    def __getattr__(self, level: str) -> Callable[..., None]:
        if level in ("debug", "info", "warning", "error", "exception"):
            return self._keep(level)
        raise AttributeError(level)

    def access(self, resp, req, environ, request_time) -> None:
        self.access_lines.append(f"{req.method} {req.path} {resp.status}")


def config(**settings: Any) -> Config:
    cfg = Config()
    for name, value in settings.items():
        cfg.set(name, value)
    return cfg


def worker(app: Callable | None = None, **settings: Any) -> SimpleNamespace:
    """What WsgiCall reads of gunicorn's worker."""
    return SimpleNamespace(cfg=config(**settings), log=Log(), wsgi=app, nr=0,
                           max_requests=1 << 30, alive=True, host=None)


def wsgi_call(app: Callable | None = None, **settings: Any) -> WsgiCall:
    return WsgiCall(worker(app, **settings))


def framer(cfg: Config | None = None) -> RequestFramer:
    return RequestFramer(head_limit(cfg or config()), MAX_BODY)


def detached() -> Connection:
    """A connection with no socket, for what only needs its buffers."""
    return Connection(None, CLIENT, SERVER, framer())  # type: ignore[arg-type]


def connections(**kw: Any) -> Connections:
    """A worker's connections with its default deadlines, over a real epoll."""
    options = dict(max_head=head_limit(config()), max_body=MAX_BODY, header_timeout=10.0,
                   min_body_rate=1000.0, keepalive=5.0, write_timeout=30.0,
                   on_closed=lambda: None)
    options.update(kw)
    return Connections(select.epoll(), Log(), **options)


def socket_pair(conns: Connections) -> tuple[Connection, socket.socket]:
    """A new connection in ``conns`` as accept() would add it, and the client's end."""
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    client_end.settimeout(5)
    return conns.add(server_end, CLIENT, SERVER), client_end
