"""Depot: a V2 / Open Inference Protocol model server on Flask and gunicorn.

The folders are the path of one request: ``server/`` (gunicorn's worker) ->
``web/`` (the Flask routes) -> ``v2/`` (the protocol's core) -> ``registry/``
(which copy of which model serves) -> ``runtimes/`` (the model itself), with
the shared truth in ``store/`` and the counts in ``metrics/``; ``depot.py``
wires them. Importing this package imports none of them: ``python -m app``
(the command line) needs no Flask and no numpy.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from .settings import Settings

__all__ = ["create_app"]


def create_app(settings: "Settings | None" = None) -> "Flask":
    """The Flask app serving ``settings`` (read from the environment if not
    given), over a :class:`~app.depot.Depot` built from them; gunicorn
    imports it from app/wsgi.py."""
    from .depot import Depot
    from .settings import Settings
    from .web import create_app as web_app

    return web_app(Depot(settings or Settings.from_env()))
