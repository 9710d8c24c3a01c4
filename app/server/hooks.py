"""What Depot does at each step of gunicorn's life: the bodies of the hooks
gunicorn.conf.py declares, each taking the process's :class:`~app.depot.Depot`.

gunicorn calls a hook in the master (start-up, a worker forked or gone) or
in a worker (booted, stopping); each is one call here, so gunicorn.conf.py
stays a list of settings, and the order of things at start-up reads in one
place: register and load the models before any worker forks, so every
worker shares the master's copies; then start the master's part in later
loads, and only then the workers.
"""
from __future__ import annotations

import gc
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from ..v2 import batching

if TYPE_CHECKING:
    from ..depot import Depot

#: the loggers whose lines go where gunicorn's error log goes: Depot's own,
#: Python's warnings (a library's, outside a model's load), and what MLflow
#: says while a model loads
LOGGERS = ("depot", "py.warnings", "mlflow")


def on_starting(server: Any) -> None:
    """Every line on stderr is JSON: Depot's own and Python's warnings go
    through gunicorn's error log (app/server/logs.py)."""
    logging.captureWarnings(True)
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = list(server.log.error_log.handlers)
        logger.setLevel(server.log.error_log.level)
        logger.propagate = False
    server.log.error_log.propagate = False


def when_ready(server: Any, depot: "Depot") -> None:
    """Register and load the repository once per deployment, before fork;
    meanwhile every connection is answered 503 instead of hanging."""
    from ..registry import cache
    from ..registry.master import Master
    from .starting import NotReadyResponder

    registry = depot.registry
    # The libraries live as long as the workers: out of the garbage
    # collector's sight, its full collections stop walking them (tens of ms,
    # every few seconds under load), and the pages stay shared instead of
    # being copied when it touches them. Models stay in its sight: a model
    # with reference cycles (XGBoost's) must be collectable once replaced.
    gc.freeze()
    with NotReadyResponder(server.LISTENERS):
        registry.startup()
    # Models loaded later are loaded by this process too, and shared with
    # fresh workers that replace the old ones (app/registry/master.py); its
    # own sync thread keeps its copies in line with the shared state.
    depot.master = registry.master = Master(server, registry,
                                            depot.settings.state_dir / "workers")
    cache.trim(force=True)  # the workers share no free pages the master will write to
    depot.master.serve()
    registry.start_sync()
    if depot.settings.metrics_port:
        # The master lives as long as the deployment: it serves the extra
        # /metrics port, summing the workers' files like the main route does.
        depot.metrics.serve("127.0.0.1", depot.settings.metrics_port, registry.store.rows)


def post_fork(server: Any, worker: Any, depot: "Depot") -> None:
    """Allocate the new worker's metrics files before anything counts, so a
    full state folder cannot SIGBUS it later (app/metrics/)."""
    depot.metrics.reserve()


def post_worker_init(worker: Any, depot: "Depot") -> None:
    """Each worker keeps its copies in line with the shared state, and
    stands for election as the deployment's one models-folder watcher.
    It tells the master when it serves, and, as it stops, when it takes no
    new requests (the master waits for both when it replaces workers)."""
    registry = depot.registry
    # What the worker inherits (the libraries the master imported while it
    # loaded models, the models loaded then) leaves the collector's walks
    # too: a full collection under load took tens of ms over those objects,
    # a stall for every request in flight, and wrote to pages the worker
    # shares with the master. A model replaced later in this worker is a new
    # object, collected as usual.
    gc.freeze()
    registry.start_sync()
    if depot.settings.watch:
        from ..registry import watcher

        watcher.start_election(registry)
    assert depot.master is not None, "when_ready made it, before any fork"
    worker.host = WorkerHost(worker, depot)
    depot.master.worker_ready()


class WorkerHost:
    """The deployment as a worker sees it (app/server/worker.py's ``Host``):
    what the worker tells it as it idles and stops, and how many waiting
    requests one model call may answer."""

    def __init__(self, worker: Any, depot: "Depot") -> None:
        self.worker = worker
        self.depot = depot

    def retiring(self) -> None:
        """A stopping worker builds no new copies: the forks replacing it have them."""
        self.depot.registry.retiring = True

    def quiet(self) -> None:
        """Tell the master, which waits for it when it replaces workers."""
        assert self.depot.master is not None
        self.depot.master.worker_quiet()

    def idle(self) -> None:
        write_held(self.worker, self.depot)

    def batch_limit(self, path: str) -> int:
        return batching.limit_for(self.depot.registry, path)


def write_held(worker: Any, depot: "Depot") -> None:
    """What a busy worker held back: its counts, and its access lines."""
    depot.metrics.write()
    held = getattr(worker.log, "write_held", None)
    if held is not None:
        held()


def worker_exit(server: Any, worker: Any, depot: "Depot") -> None:
    """A worker that stops leaves the shared state's list of live processes
    (with PostgreSQL, a control call would otherwise wait for it). Then it
    ends at once, with gunicorn's exit code: the interpreter's teardown
    would touch every object the worker shares with the master, copying
    those pages, tens of MB for each worker a roll replaces
    (app/registry/master.py)."""
    try:
        write_held(worker, depot)
        depot.registry.store.close()
    finally:
        error = sys.exc_info()[1]
        code = (error.code or 0) if isinstance(error, SystemExit) else 1
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def child_exit(server: Any, worker: Any, depot: "Depot") -> None:
    """A dead worker's counters stay counted, folded into one set of files
    (workers are replaced on every hot load: app/registry/master.py)."""
    depot.metrics.retire(worker.pid)
    if depot.master is not None:
        depot.master.worker_gone(worker.pid)
