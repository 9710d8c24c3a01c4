"""One whole request through gunicorn's parser and the WSGI app, its answer into the connection.

By the time a request gets here its bytes are all in (:mod:`app.server.framing`),
so gunicorn's parser reads them from memory and never waits for a client.
gunicorn's response writes to the :class:`~app.server.connection.Connection`
as if it were the socket; the worker sends the bytes when the socket takes
them. This is uvicorn's ``RequestResponseCycle`` (one request through the
app) apart from its ``H11Protocol`` (a connection's bytes), and gthread's
``handle_request`` apart from its ``TConn``. Unlike uvicorn's cycle,
:class:`WsgiCall` keeps no request's state: a worker has one, and serving a
request makes no object of its own; the threads of control calls and of
grouped requests call it at once.

A request gunicorn's parser refuses is answered with Depot's JSON error and
the status gunicorn gives it, and the connection ends.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any

from gunicorn import http
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi

from ..environ import HOLDS_WRITES
from ..errors import (BadRequest, DepotError, ExpectationFailed, Forbidden, HeadersTooLarge,
                      NotImplementedCoding, URITooLong)
from ..v2 import batching
from .answers import error_answer, status_line
from .connection import Connection

# gunicorn's parse errors that are not a plain 400, as the failures they are.
ERROR_OF_PARSE_ERROR: dict[type, type[DepotError]] = {
    http_errors.LimitRequestLine: URITooLong,
    http_errors.LimitRequestHeaders: HeadersTooLarge,
    http_errors.UnsupportedTransferCoding: NotImplementedCoding,
    http_errors.ExpectationFailed: ExpectationFailed,
    http_errors.ForbiddenProxyRequest: Forbidden,
    http_errors.ConfigurationProblem: DepotError,
}


def head_limit(cfg) -> int:
    """The longest request head gunicorn's parser accepts under ``cfg``'s
    limits (a request line, the header fields, their line ends): a longer
    one is handed to the parser to refuse (414, 431), never waited for."""
    return (cfg.limit_request_line or 8190) + \
        (cfg.limit_request_fields or 100) * ((cfg.limit_request_field_size or 8190) + 2) + 4


class BufferedResponse(wsgi.Response):
    """gunicorn's response, minus sendfile: the body joins the connection's
    output buffer like everything else."""

    def can_sendfile(self) -> bool:
        return False


class WsgiCall:
    """How the worker runs one request through the app: parse, call, answer.

    The worker is gunicorn's: its ``cfg`` hooks take it, and it keeps the
    request count, ``alive``, the app and its ``host`` (app/server/worker.py).
    """

    def __init__(self, worker) -> None:
        self.worker = worker
        self.cfg = worker.cfg
        self.log = worker.log

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
        worker = self.worker
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(worker, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn, conn.client, conn.server, self.cfg,
                                        response_class=BufferedResponse)
            environ[HOLDS_WRITES] = worker.host is not None
            if seat is not None:
                environ[batching.SEAT] = seat
            worker.nr += 1
            if worker.nr >= worker.max_requests:
                if worker.alive:
                    self.log.info("Autorestarting worker after current request.")
                worker.alive = False
            if not worker.alive or not self.cfg.keepalive:
                resp.force_close()
            respiter = worker.wsgi(environ, resp.start_response)
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
                self.cfg.post_request(worker, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's parse errors as Depot's JSON errors, with the status
        gunicorn gives them; a traceback only for what is not the client's."""
        if isinstance(exc, http_errors.ParseException) and not isinstance(
                exc, (http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName)):
            kind = next((error for parsed, error in ERROR_OF_PARSE_ERROR.items()
                         if isinstance(exc, parsed)), BadRequest)
            error = kind(f"{type(exc).__name__}: {exc}")
            self.log.warning("Invalid request from %s: %s", addr and addr[0], error.message)
        else:
            error = DepotError("internal error")
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
        if req is not None:
            environ = wsgi.default_environ(req, client, self.cfg)
            resp = wsgi.Response(req, client, self.cfg)
            resp.status = status_line(error.status)
            self.log.access(resp, req, environ, datetime.now() - datetime.now())
        client.sendall(error_answer(error))
