"""Flask's side of Depot: the V2 routes, the console, and how an answer or
an error is written as HTTP. Nothing outside this folder imports Flask."""
from __future__ import annotations

from typing import TYPE_CHECKING

from flask import Flask

from . import api, console, errors
from .sessions import NoSessions

if TYPE_CHECKING:
    from ..depot import Depot

__all__ = ["create_app"]


def create_app(depot: "Depot") -> Flask:
    """A Flask app over ``depot``'s parts: ``app.extensions["depot"]``
    is the one place the routes take them from."""
    app = Flask(__name__)
    app.session_interface = NoSessions()
    app.config["MAX_CONTENT_LENGTH"] = depot.settings.max_body_bytes
    app.extensions["depot"] = depot
    app.register_blueprint(api.bp)
    if depot.settings.console:
        app.register_blueprint(console.bp)
    errors.init_app(app)
    return app
