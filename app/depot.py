"""One Depot process's parts, built once from its settings and wired here.

This is the composition root: the app factory (:func:`app.create_app`) and
gunicorn's hooks (app/server/hooks.py) both take their parts from a
:class:`Depot`, so each part is made in one place and handed to those that
use it, instead of being looked up where it is needed.
"""
from __future__ import annotations

import time

from typing import TYPE_CHECKING

from .metrics import Metrics
from .registry import Registry
from .settings import Settings
from .v2.core import DataPlane

if TYPE_CHECKING:
    from .registry.master import Master


class Depot:
    """The settings, the shared-state registry, the metrics, and the V2 core
    over them, for one process (and inherited by the workers it forks)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.registry = Registry.open(settings)
        self.metrics = Metrics(settings.metrics_dir)
        self.core = DataPlane(self.registry, self.metrics, settings.api_key)
        #: when this process built it: the console's uptime
        self.started = time.time()
        #: the gunicorn master's part in loads (app/registry/master.py), made
        #: once the models are loaded and before the first fork; None outside
        #: gunicorn
        self.master: "Master | None" = None
