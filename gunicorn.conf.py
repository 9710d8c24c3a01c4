"""gunicorn settings for Depot.

Every value here can be overridden on the command line or through
GUNICORN_CMD_ARGS (``--bind``, ``--workers``, ...). Depot's own settings are
DEPOT_* variables, read by app/settings.py.
"""
import gc
import logging
import os
import shutil
import sys

from app.settings import Settings

# One BLAS/OpenMP thread per worker: gunicorn already runs a process per core.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# Inference metrics are counted per process in prometheus-client's multiprocess
# files; a new deployment starts them from zero. This must happen before the
# app (and prometheus_client) is imported.
_settings = Settings.from_env()
_metrics = _settings.state_dir / "metrics"
shutil.rmtree(_metrics, ignore_errors=True)
_metrics.mkdir(parents=True)
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_metrics)

wsgi_app = "app.wsgi:app"
bind = ["127.0.0.1:8080"]
workers = 2
# Connections are kept alive, and served one request at a time per worker
# (app/server/worker.py): measured faster than both sync, which closes every
# connection, and gthread, which hands each request to a thread pool; model
# work holds the GIL, so threads would only queue behind one another.
worker_class = "app.server.worker.KeepAliveWorker"
# Seconds an idle connection is kept; behind a load balancer, make it longer
# than the balancer's own idle timeout.
keepalive = 5
# Load the app, and the models, once in the master: workers share the pages.
preload_app = True
timeout = 60
graceful_timeout = 20
# Depot is managed through its HTTP API; gunicorn's control socket would be a
# second, unauthenticated way in, and one path shared by every deployment.
control_socket_disable = True
# JSON lines on stderr: one per request (access) and one per model state change.
logger_class = "app.server.logs.JsonLogger"
errorlog = "-"
accesslog = "-" if _settings.access_log else None
loglevel = _settings.log_level


def _registry(server):
    return server.app.wsgi().extensions["depot"]


def on_starting(server):
    """Depot's own log lines, and Python's warnings, go where gunicorn's
    error log goes: every line on stderr is JSON."""
    import logging

    # Python warnings (a library's, outside a model's load) are log lines
    # too, and so is what MLflow says while a model loads.
    logging.captureWarnings(True)
    for name in ("depot", "py.warnings", "mlflow"):
        logger = logging.getLogger(name)
        logger.handlers = list(server.log.error_log.handlers)
        logger.setLevel(server.log.error_log.level)
        logger.propagate = False
    server.log.error_log.propagate = False


def when_ready(server):
    """Register and load the repository once per deployment, before fork;
    meanwhile every connection is answered 503 instead of hanging."""
    from app.server.starting import NotReadyResponder

    from app.registry.master import Master

    registry = _registry(server)
    # The libraries live as long as the workers: out of the garbage
    # collector's sight, its full collections stop walking them (tens of ms,
    # every few seconds under load), and the pages stay shared instead of
    # being copied when it touches them. Models stay in its sight: a model
    # with reference cycles (XGBoost's) must be collectable once replaced.
    gc.freeze()
    with NotReadyResponder(server.LISTENERS):
        registry.startup()
    # Models loaded later are loaded by this process too, and shared with
    # fresh workers that replace the old ones (app/registry/master.py); its own sync
    # thread keeps its copies in line with the shared state.
    registry.master = Master(server, registry, registry.settings.state_dir / "workers")
    from app.registry import cache

    cache.trim(force=True)  # the workers share no free pages the master will write to
    registry.master.serve()
    registry.start_sync()
    if registry.settings.metrics_port:
        # The master lives as long as the deployment: it serves the extra
        # /metrics port, summing the workers' files like the main route does.
        metrics = server.app.wsgi().extensions["depot.metrics"]
        metrics.serve("127.0.0.1", registry.settings.metrics_port, registry.store.rows)


def post_worker_init(worker):
    """Each worker keeps its copies in line with the shared state, and
    stands for election as the deployment's one models-folder watcher.
    It tells the master when it serves, and, as it stops, when it takes no
    new requests (the master waits for both when it replaces workers)."""
    registry = _registry(worker)
    # What the worker inherits (the libraries the master imported while it
    # loaded models, the models loaded then) leaves the collector's walks
    # too: a full collection under load took 20-75 ms over those ~140,000
    # objects, a stall for every request in flight, and wrote to pages the
    # worker shares with the master. A model replaced later in this worker
    # is a new object, collected as usual.
    gc.freeze()
    registry.start_sync()
    if registry.settings.watch:
        from app.registry import watcher

        watcher.start_election(registry)
    worker.on_retiring = lambda: setattr(registry, "retiring", True)
    worker.on_quiet = registry.master.worker_quiet
    worker.on_idle = lambda: _write_held(worker)
    from app.v2 import batching

    worker.batch_limit = lambda path: batching.limit_for(registry, path)
    registry.master.worker_ready()


def _write_held(worker):
    """What a busy worker held back: its counts, and its access lines."""
    worker.app.wsgi().extensions["depot.metrics"].write()
    write_held = getattr(worker.log, "write_held", None)
    if write_held is not None:
        write_held()


def worker_exit(server, worker):
    """A worker that stops leaves the shared state's list of live processes
    (with PostgreSQL, a control call would otherwise wait for it). Then it
    ends at once, with gunicorn's exit code: the interpreter's teardown
    would touch every object the worker shares with the master, copying
    those pages, tens of MB for each worker a roll replaces (app/registry/master.py)."""
    try:
        _write_held(worker)
        _registry(worker).store.close()
    finally:
        error = sys.exc_info()[1]
        code = (error.code or 0) if isinstance(error, SystemExit) else 1
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code if isinstance(code, int) else 1)


def post_fork(server, worker):
    """Allocate the new worker's metrics files before anything counts, so a
    full state folder cannot SIGBUS it later (app/metrics/)."""
    server.app.wsgi().extensions["depot.metrics"].reserve()


def child_exit(server, worker):
    """A dead worker's counters stay counted, folded into one set of files
    (workers are replaced on every hot load: app/registry/master.py)."""
    server.app.wsgi().extensions["depot.metrics"].retire(worker.pid)
    master = _registry(server).master
    if master is not None:
        master.worker_gone(worker.pid)
