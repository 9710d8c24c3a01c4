"""gunicorn settings for Depot.

Every value here can be overridden on the command line or through
GUNICORN_CMD_ARGS (``--bind``, ``--workers``, ...). Depot's own settings are
DEPOT_* variables, read by app/settings.py.
"""
import os
import shutil

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

# The hooks' bodies (they import numpy: after the thread counts are set)
from app.server import hooks  # noqa: E402

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


# The hooks' bodies are in app/server/hooks.py, each given the process's
# parts (app/depot.py): the app gunicorn loaded holds them.
def _depot(server):
    return server.app.wsgi().extensions["depot"]


def on_starting(server):
    hooks.on_starting(server)


def when_ready(server):
    hooks.when_ready(server, _depot(server))


def post_fork(server, worker):
    hooks.post_fork(server, worker, _depot(server))


def post_worker_init(worker):
    hooks.post_worker_init(worker, _depot(worker))


def worker_exit(server, worker):
    hooks.worker_exit(server, worker, _depot(worker))


def child_exit(server, worker):
    hooks.child_exit(server, worker, _depot(server))
