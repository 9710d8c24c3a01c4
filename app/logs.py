"""JSON logs through gunicorn's own logging: one line per request, one line
per model state change, one object per line so log shippers need no parser.

gunicorn is told to use :class:`JsonLogger` (``logger_class`` in
gunicorn.conf.py); it keeps gunicorn's handlers, files and reopen-on-USR1, and
only changes what a line looks like.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import orjson
from gunicorn.glogging import Logger

from .worker import HOLDS_WRITES

#: LogRecord attributes that are not extra fields
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


#: handlers whose stream the access log may write to directly
_PLAIN_STREAMS = (logging.StreamHandler, logging.FileHandler)


def _timestamp(created: float) -> str:
    second = int(created)
    if second != _second[0]:  # strftime once a second, not once a line
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int(created * 1000) % 1000:03d}Z"


_second: list = [None, ""]


def _write(stream: Any, line: str) -> None:
    """One line, in one write to the stream's file (what the handler's own
    write and flush make, without the text layer), or through the stream."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        stream.write(line)
        stream.flush()
        return
    stream.flush()  # whatever the handler buffered goes first
    os.write(fd, line.encode())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class JsonLogger(Logger):
    """gunicorn's logger, writing JSON lines."""

    #: access lines held until the worker next waits, at most
    HELD_LINES = 64

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
        self._held: list[str] = []

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict):
            return
        method, path = environ.get("REQUEST_METHOD"), environ.get("PATH_INFO")
        status = int(str(resp.status).split()[0])
        fields = {
            "type": "access",
            "method": method,
            "path": path,
            "status": status,
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "model": environ.get("depot.model"),
            "request_id": environ.get("depot.request_id"),
            "worker_pid": os.getpid(),
            "remote": environ.get("REMOTE_ADDR"),
        }
        if not all(type(h) in _PLAIN_STREAMS for h in self.access_log.handlers):
            self.access_log.info("%s %s %s", method, path, status, extra=fields)
            return
        # One line a request, the line logging would write, made at a third
        # of the cost; held, if the worker says so, until it next waits (the
        # answer goes first, and one write carries a burst's lines).
        line = orjson.dumps({"time": _timestamp(time.time()), "level": "info",
                             "logger": self.access_log.name, "pid": fields["worker_pid"],
                             "message": f"{method} {path} {status}", **fields},
                            default=str).decode() + "\n"
        self._held.append(line)
        if not environ.get(HOLDS_WRITES) or len(self._held) >= self.HELD_LINES:
            self.write_held()

    def write_held(self) -> None:
        """Write the access lines held back, in one write per handler."""
        if not self._held:
            return
        held, self._held = self._held, []  # what another thread adds goes in the next
        lines = "".join(held)
        for handler in self.access_log.handlers:
            with handler.lock:
                _write(handler.stream, lines)
