"""Flask's side of Depot: the V2 routes, the console, and how an answer or
an error is written as HTTP. Nothing outside this folder imports Flask."""
from __future__ import annotations

import time

from flask import Flask

from ..metrics import Metrics
from ..registry import Registry
from ..settings import Settings
from . import api, console, errors
from .sessions import NoSessions

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__)
    app.session_interface = NoSessions()
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["DEPOT_API_KEY"] = settings.api_key
    app.extensions["depot"] = Registry.open(settings)
    app.extensions["depot.metrics"] = Metrics(settings.metrics_dir)
    app.config["DEPOT_STARTED"] = time.time()
    app.register_blueprint(api.bp)
    if settings.console:
        app.register_blueprint(console.bp)
    errors.init_app(app)
    return app
