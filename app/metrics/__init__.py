"""Inference metrics, counted in every worker and read as one.

gunicorn runs several processes, so the counters live in prometheus-client's
multiprocess files (one set per process, memory-mapped, summed when read).
The same numbers serve Triton's statistics extension (``/v2/models/stats``),
Prometheus (``/metrics``) and the console, so they can never disagree.

Three parts, one job each: :mod:`~app.metrics.counters` counts on the hot
path, :mod:`~app.metrics.files` keeps the multiprocess files (allocated
before use, a dead worker's folded) and :mod:`~app.metrics.readings` reads
them; :mod:`~app.metrics.names` is what they all call the metrics.
:class:`Metrics` puts them together behind the API the rest of Depot uses.
"""
from __future__ import annotations

from pathlib import Path

from .counters import Counters, Tracker
from .files import Files
from .names import BUCKETS, LABELS, LAST_MODE, PHASES
from .readings import Readings

__all__ = ["BUCKETS", "LABELS", "LAST_MODE", "PHASES", "Counters", "Files", "Metrics",
           "Readings", "Tracker"]


class Metrics(Counters):
    """The app's one metrics object: this process's counters, with files and readers bound on.

    It is ``app.extensions["depot.metrics"]``. The hot path (``track``,
    ``write``, ``control_call``) is inherited, not bound: Python 3.11 looks
    up a bound method kept as an instance attribute on a slower path than a
    method of the class, and ``track`` runs on every request. The rest are
    the parts' own methods, bound once.
    """

    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.files = Files(multiprocess_dir)
        super().__init__(self.files.reserve)
        self.readings = Readings(self, self.files)
        # gunicorn's hooks: after a fork, and once a worker has died
        self.reserve = self.files.reserve
        self.retire = self.files.retire
        # the readers
        self.exposition = self.readings.exposition
        self.serve = self.readings.serve
        self.statistics = self.readings.statistics
        self.traffic = self.readings.traffic
