"""No sessions: Depot's clients are programs sending one request at a time
with no cookies, and none of its routes keeps anything between requests.

Flask opens a session for every request and, with no secret key, makes a
new null session to refuse writes to it; this interface hands every request
the same null session and saves nothing, which is 3% of Flask's own work on
a request (bench/instructions.py counts it). A write to ``flask.session``
still fails as it would without a secret key.
"""
from __future__ import annotations

from typing import Any

from flask.sessions import NullSession, SessionInterface


class NoSessions(SessionInterface):
    def __init__(self) -> None:
        self._null = NullSession()

    def open_session(self, app: Any, request: Any) -> NullSession:
        return self._null

    def save_session(self, app: Any, session: Any, response: Any) -> None:
        """Nothing to save: the session is always the null one."""
