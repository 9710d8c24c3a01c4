"""The registry's log lines: one per model state change, and the words they share.

Every part of the registry (the catalog, the loader, the reconciler, the
sync) says what happened to a model version the same way, on the same
logger, with fields a JSON log keeps apart, so a deployment's log reads as
one story whichever process or part wrote a line.
"""
from __future__ import annotations

import logging

from ..errors import label

__all__ = ["describe_error", "event", "label", "log"]

log = logging.getLogger("depot.registry")


def describe_error(e: BaseException) -> str:
    """An error in one line: its class and the first line of its message."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def event(event: str, name: str, version: str, reason: str, level: int = logging.INFO) -> None:
    """One log line per state change, with fields a JSON log keeps apart."""
    log.log(level, "%s %s: %s", event, label(name, version), reason,
            extra={"event": event, "model": name, "version": version, "reason": reason})
