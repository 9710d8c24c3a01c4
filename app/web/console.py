"""The operator console: one page that shows every model's state and traffic
and loads or unloads it, rendered by the app itself.

The page (``GET /`` and ``/console``) is a Jinja template, a stylesheet and a
small script served from the app: no build step, nothing fetched from
elsewhere, so it works on a machine with no internet. The script asks
``GET /console/state`` every two seconds for the same facts the JSON APIs
give (the index with its reasons, the metadata, the counters summed over
every worker), and calls the repository API itself for Load, Unload and
Reload, with the API key when the deployment has one. It writes every name,
reason and value as text, never as markup. ``DEPOT_CONSOLE=false`` leaves
the blueprint out."""
from __future__ import annotations

import os
import socket
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
from flask import Blueprint, Response, render_template

from ..v2.core import SERVER_NAME, SERVER_VERSION
from .api import depot
from ..metrics import BUCKETS
from ..store import READY, Row
from .responses import json_response

bp = Blueprint("console", __name__, template_folder="templates", static_folder="static",
               static_url_path="/console/static")

#: the page runs only what it was served with, and sends only to this server
POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
          "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'")


@bp.get("/")
@bp.get("/console")
def page() -> Response:
    response = Response(render_template(
        "console.html", version=SERVER_VERSION, host=socket.gethostname(),
        initial=state_of_the_server(), key_required=depot().settings.api_key is not None))
    response.headers["Content-Security-Policy"] = POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@bp.get("/console/state")
def state() -> Response:
    return json_response(state_of_the_server())


def state_of_the_server() -> dict[str, Any]:
    parts = depot()
    reg = parts.registry
    rows = reg.index(False)
    traffic = parts.metrics.traffic()
    started = parts.started
    unready = reg.unready_reason()  # a store health check: once
    now = time.time()
    return {
        "time": now,
        "buckets": list(BUCKETS),
        "server": {
            "name": SERVER_NAME,
            "version": SERVER_VERSION,
            "host": socket.gethostname(),
            "workers": reg.master.serving_workers() if reg.master is not None else 1,
            "watcher_pid": reg.watcher_pid(),
            "store": store_description(reg.settings),
            "uptime_seconds": now - started,
            "ready": unready is None,
            "unready_reason": unready,
            "key_required": parts.settings.api_key is not None,
        },
        "models": [model_entry(reg, row, traffic.get((row.name, row.version))) for row in rows],
    }


def model_entry(reg: Any, row: Row, counts: dict[str, Any] | None) -> dict[str, Any]:
    details = orjson.loads(row.details)
    return {
        "name": row.name,
        "version": row.version,
        "state": row.state,
        "reason": row.reason,
        "platform": row.runtime or "",
        "inputs": details.get("inputs") or [],
        "outputs": details.get("outputs") or [],
        "source": os.path.relpath(row.source, reg.settings.models) if row.source else "",
        "loaded_at": loaded_at(reg, row),
        "traffic": counts or {"requests": 0, "failures": 0, "rows": 0,
                              "buckets": [0] * (len(BUCKETS) + 1)},
    }


def loaded_at(reg: Any, row: Row) -> float | None:
    """When this host made the snapshot the model serves: its load, here."""
    if row.state != READY or not row.snapshot:
        return None
    try:
        return reg.snapshots.path(row).parent.stat().st_mtime
    except OSError:
        return None


def store_description(settings: Any) -> str:
    """Where the shared state lives, without its password."""
    url = settings.state_url
    if url is None or not url.startswith("postgres"):
        return f"SQLite in {settings.state_dir}"
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    port = f":{parts.port}" if parts.port else ""
    return f"PostgreSQL {user}{parts.hostname or ''}{port}{parts.path}"
