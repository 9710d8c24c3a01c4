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

#: LogRecord attributes that are not extra fields
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
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

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())

    def access(self, resp: Any, req: Any, environ: dict, request_time: Any) -> None:
        if not (self.cfg.accesslog or self.cfg.logconfig or self.cfg.logconfig_dict):
            return
        fields = {
            "type": "access",
            "method": environ.get("REQUEST_METHOD"),
            "path": environ.get("PATH_INFO"),
            "status": int(str(resp.status).split()[0]),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "model": environ.get("depot.model"),
            "request_id": environ.get("depot.request_id"),
            "worker_pid": os.getpid(),
            "remote": environ.get("REMOTE_ADDR"),
        }
        self.access_log.info("%s %s %s", fields["method"], fields["path"], fields["status"],
                             extra=fields)
