"""Answers while the models load: 503 ``{"ready": false}``, not silence.

gunicorn's master opens the listening sockets first, then runs ``when_ready``
(where Depot loads the models, so the workers it forks afterwards share them),
and only then forks the workers. Without this, a probe during loading would
hang until it timed out. :class:`NotReadyResponder` answers every connection
during that window with a 503 and closes it, then steps aside for the workers.
"""
from __future__ import annotations

import select
import socket
import threading
from types import TracebackType
from typing import Any

BODY = b'{"ready":false,"error":"starting up: models are loading"}'
RESPONSE = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(BODY)).encode() + b"\r\nConnection: close\r\n"
            b"Retry-After: 1\r\n\r\n" + BODY)


class NotReadyResponder:
    def __init__(self, listeners: list[Any]) -> None:
        self.sockets = [listener.sock for listener in listeners]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="depot-starting", daemon=True)

    def __enter__(self) -> "NotReadyResponder":
        self._thread.start()
        return self

    def __exit__(self, kind: type | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while not self._done.is_set():
            readable, _, _ = select.select(self.sockets, [], [], 0.05)
            for listener in readable:
                try:
                    conn, _ = listener.accept()
                except (BlockingIOError, InterruptedError):
                    continue
                self._answer(conn)

    @staticmethod
    def _answer(conn: socket.socket) -> None:
        try:
            conn.settimeout(1.0)
            conn.recv(65536)  # the request line and headers; the answer is the same for all
            conn.sendall(RESPONSE)
        except OSError:
            pass
        finally:
            conn.close()
