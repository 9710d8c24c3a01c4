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

from ..environ import HOLDS_WRITES, MODEL, REQUEST_ID

#: LogRecord attributes that are not extra fields
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


#: an access line's own fields, after the formatter's
_ACCESS_FIELDS = ("type", "method", "path", "status", "duration_ms", "model", "request_id",
                  "worker_pid", "remote")
#: handlers whose stream the access log may write to directly
_PLAIN_STREAMS = (logging.StreamHandler, logging.FileHandler)


def _timestamp(created: float) -> str:
    millis = int(created * 1000)
    second = millis // 1000
    if second != _second[0]:  # strftime once a second, not once a line
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return _second[1] + _MILLIS[millis % 1000]


_second: list = [None, ""]
_MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))


def _milliseconds(took: Any) -> float:
    """A timedelta in milliseconds, to the microsecond: its whole number of
    microseconds over 1000 is the float nearest that decimal, which prints as
    it (round(..., 3) costs three and a half times as much)."""
    return ((took.days * 86400 + took.seconds) * 1_000_000 + took.microseconds) / 1000


def _write(stream: Any, lines: bytes) -> None:
    """Lines, in one write to the stream's file (what the handler's own
    write and flush make, without the text layer), or through the stream."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        stream.write(lines.decode())
        stream.flush()
        return
    stream.flush()  # whatever the handler buffered goes first
    os.write(fd, lines)


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

    #: requests whose access lines are held until the worker next waits, at most
    HELD_LINES = 64

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
        self.hold_access(bool(cfg.accesslog or cfg.logconfig or cfg.logconfig_dict))

    def hold_access(self, logs_access: bool) -> None:
        """Start with no access line held (and, unless ``logs_access``, none made)."""
        self._logs_access = logs_access
        self._held: list[tuple] = []
        #: a route's line segments (see write_held), made by the process of this pid
        self._segments: dict[tuple, tuple[bytes, bytes, bytes, bytes]] = {}
        self._segments_pid: int | None = None

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        """One line a request. On Depot's worker (HOLDS_WRITES) only its
        values are kept here; the lines are made and written once the
        answer is out, in one write for every request served meanwhile."""
        if not self._logs_access:
            return
        self._held.append((time.time(), environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"),
                           resp.status, request_time, environ.get(MODEL),
                           environ.get(REQUEST_ID), environ.get("REMOTE_ADDR")))
        if not environ.get(HOLDS_WRITES) or len(self._held) >= self.HELD_LINES:
            self.write_held()

    def write_held(self) -> None:
        """Write the access lines held back: the line logging would write,
        made without logging's machinery, straight to gunicorn's streams; or
        through logging, if it has handlers of other kinds."""
        held, self._held = self._held, []  # what another thread adds goes in the next
        if not held:
            return
        pid = os.getpid()
        name = self.access_log.name
        if not all(type(h) in _PLAIN_STREAMS for h in self.access_log.handlers):
            for when, method, path, status, took, model, request_id, remote in held:
                line = _access_line(name, pid, when, method, path, int(str(status)[:3]), took,
                                    model, request_id, remote)
                # logging's handlers make the line: the fields go as extras
                self.access_log.info(line["message"], extra={k: line[k] for k in _ACCESS_FIELDS})
            return
        # Most of a line is the same for every request to one route: it is
        # made once, and each line only fills in its time, duration and id.
        known = self._segments
        if self._segments_pid != pid:  # made by the process this one forked from
            known.clear()
            self._segments_pid = pid
        chunks = []
        for when, method, path, status, took, model, request_id, remote in held:
            key = (method, path, status, model, remote)
            segments = known.get(key)
            if segments is None:
                if len(known) >= 1024:  # clients choose the paths
                    known.clear()
                segments = known[key] = _segments(name, pid, method, path,
                                                  int(str(status)[:3]), model, remote)
            chunks += (segments[0], orjson.dumps(_timestamp(when)), segments[1],
                       orjson.dumps(_milliseconds(took)), segments[2],
                       orjson.dumps(request_id, default=str), segments[3])
        text = b"".join(chunks)
        for handler in self.access_log.handlers:
            with handler.lock:
                _write(handler.stream, text)


def _access_line(name: str, pid: int, when: float, method: Any, path: Any, code: int,
                 took: Any, model: Any, request_id: Any, remote: Any) -> dict[str, Any]:
    """An access line's fields: the keys JsonFormatter writes, in its order."""
    return {"time": _timestamp(when), "level": "info", "logger": name, "pid": pid,
            "message": f"{method} {path} {code}", "type": "access", "method": method,
            "path": path, "status": code, "duration_ms": _milliseconds(took), "model": model,
            "request_id": request_id, "worker_pid": pid, "remote": remote}


def _segments(name: str, pid: int, method: Any, path: Any, code: int, model: Any,
              remote: Any) -> tuple[bytes, bytes, bytes, bytes]:
    """The four runs of bytes around an access line's time, duration and
    request id: the bytes orjson writes for the whole line, since it writes
    an object as its members, comma-separated, with nothing between."""
    def members(**values: Any) -> bytes:
        return orjson.dumps(values, default=str)[1:-1]

    return (b'{"time":',
            b"," + members(level="info", logger=name, pid=pid, message=f"{method} {path} {code}",
                           type="access", method=method, path=path, status=code)
            + b',"duration_ms":',
            b"," + members(model=model) + b',"request_id":',
            b"," + members(worker_pid=pid, remote=remote) + b"}\n")
