"""Fixtures that run Depot for real: gunicorn with several workers on a free
localhost port, its own copy of the models and its own state folder.

Every wait is a poll with a deadline, and every server is stopped by the PID
of its process group when the fixture ends.

A test says what it needs with a marker (:data:`MARKERS`); a fixture that
starts such a thing marks every test that uses it, and a test that starts
gunicorn without the ``server`` marker fails, so ``make test-fast``
(``-m "not server and not postgres and not browser"``) stays in-process.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import joblib
import numpy as np
import orjson
import pytest
import requests
import xgboost as xgb
from sklearn.datasets import load_digits

from postgres import postgres, postgres_url  # noqa: F401  (fixtures: a private PostgreSQL)

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"

MARKERS = {
    "server": "starts a real gunicorn server (or another Depot process)",
    "postgres": "starts a private PostgreSQL cluster",
    "browser": "drives Debian's headless Chromium",
    "slow": "takes more than about ten seconds on its own",
}
#: the fixtures that start each thing, and so mark the tests that use them
NEEDED_BY_FIXTURE = {"server": "server", "make_server": "server", "postgres": "postgres",
                     "postgres_url": "postgres", "browser": "browser"}
#: the markers of the test that runs now (run_server checks for ``server``)
_current_marks: set[str] = set()


def pytest_configure(config: pytest.Config) -> None:
    for name, meaning in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in NEEDED_BY_FIXTURE.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture of the test (a shared server's too) is set up."""
    _current_marks.clear()
    _current_marks.update(m.name for m in item.iter_markers())


def wait_until(check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while not (seen := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"still {seen!r} after {timeout}s")
        time.sleep(every)
    return seen


class _Sleep:
    """Unpickles by sleeping, then is no model at all."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self):
        return (time.sleep, (self.seconds,))


def slow_artifact(seconds: float) -> bytes:
    """A pickle whose load keeps a worker busy for ``seconds``, then fails."""
    return pickle.dumps(_Sleep(seconds))


def spread(call: Callable[[], Any], times: int, threads: int = 8) -> list[Any]:
    """Make ``times`` calls from ``threads`` threads at once. Sequential
    requests tend to land on one gunicorn worker (the kernel wakes the same
    one); concurrent ones keep several busy, so every worker takes some."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(lambda _: call(), range(times)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    url: str
    proc: subprocess.Popen
    models: Path
    state: Path
    log: Path

    def get(self, path: str, **kw: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=30, **kw)

    def post(self, path: str, **kw: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kw)

    def index(self, **body: Any) -> dict[str, dict]:
        r = self.post("/v2/repository/index", json=body)
        assert r.status_code == 200, r.text
        return {e["name"]: e for e in r.json()}

    def infer(self, model: str, body: dict, version: str | None = None) -> requests.Response:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        return self.post(path, json=body)

    def events(self) -> list[tuple[str, str]]:
        """The (event, model) of every state change the server logged."""
        lines = [orjson.loads(line) for line in self.log.read_text().splitlines()
                 if line.startswith("{")]
        return [(line["event"], line["model"]) for line in lines if "event" in line]

    def json_log(self) -> list[dict]:
        """Every line the server wrote, each of which must be a JSON object."""
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        assert [line for line in lines if not line.startswith("{")] == []
        return [orjson.loads(line) for line in lines]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def session_pids(self) -> list[str]:
        """The master and everything it started (the server's session)."""
        out = subprocess.run(["pgrep", "-s", str(self.proc.pid)], capture_output=True, text=True)
        return out.stdout.split()

    def pss_mb(self) -> float:
        """Proportional set size of the whole process tree (its session),
        from /proc/<pid>/smaps_rollup: shared pages count once in total."""
        kib = 0
        for pid in self.session_pids():
            with contextlib.suppress(OSError):
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
                kib += sum(int(line.split()[1]) for line in rollup.splitlines()
                           if line.startswith("Pss:"))
        return kib / 1024

    def worker_pids(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}


def _ready(server: Server) -> bool:
    if server.proc.poll() is not None:
        raise AssertionError(f"server exited with {server.proc.returncode}:\n{server.log_tail()}")
    try:
        return server.get("/v2/health/ready").status_code == 200
    except requests.ConnectionError:
        return False


@contextlib.contextmanager
def run_server(tmp: Path, workers: int = 4, env: dict[str, str] | None = None,
               models: Path | None = MODELS, wait: bool = True,
               port: int | None = None, nofile: int | None = None) -> Iterator[Server]:
    """A server on ``port`` (else a free one); ``nofile`` caps its open
    descriptors (RLIMIT_NOFILE) from the start. ``wait`` waits for every
    worker, not only the first to answer ready: on a slow machine the others
    are still booting, and a test that counts workers would count them late."""
    assert "server" in _current_marks, "a test that starts gunicorn needs @pytest.mark.server"
    folder = tmp / "models"
    if models is not None:
        shutil.copytree(models, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    folder.mkdir(exist_ok=True)
    state = tmp / "state"
    log = tmp / "server.log"
    port = port or free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DEPOT_")}
    full_env.update({"DEPOT_MODELS": str(folder), "DEPOT_STATE_DIR": str(state)}, **(env or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
            cwd=ROOT, env=full_env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
            if nofile else None,
        )
    server = Server(f"http://127.0.0.1:{port}", proc, folder, state, log)
    try:
        if wait:
            wait_until(lambda: _ready(server) and len(server.worker_pids()) == workers,
                       timeout=60)
        yield server
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One 4-worker server shared by the tests that leave it as they found it."""
    with run_server(tmp_path_factory.mktemp("shared")) as s:
        yield s


@pytest.fixture
def make_server(tmp_path: Path) -> Callable[..., contextlib.AbstractContextManager[Server]]:
    """A private server, for tests that change the models on disk."""
    return lambda **kw: run_server(tmp_path, **kw)


@contextlib.contextmanager
def in_process(tmp: Path, models: Path | None = MODELS, **settings: Any) -> Iterator[Any]:
    """Depot's Flask app in this process, over its own copy of ``models`` and
    its own state folder (SQLite), started as gunicorn's master starts it:
    no server, no worker, no watcher. What a request means (the codec, the
    core, the registry) is tested here, where a failure points at its cause."""
    from app import create_app
    from app.settings import Settings

    folder = tmp / "models"
    if models is not None:
        shutil.copytree(models, folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    folder.mkdir(parents=True, exist_ok=True)
    app = create_app(Settings(models=folder, state_dir=tmp / "state", watch=False,
                              sync_interval=3600.0, **settings))
    depot = app.extensions["depot"]
    depot.registry.startup()
    try:
        yield app
    finally:
        depot.registry.store.close()


@pytest.fixture(scope="module")
def local_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The bundled models served in-process, shared by a module's tests that
    leave them as they found them."""
    with in_process(tmp_path_factory.mktemp("local")) as app:
        yield app


# -- the example models, loaded the way their own framework does ------------------

@pytest.fixture(scope="session")
def digits() -> np.ndarray:
    return load_digits().data.astype(np.float32)


@pytest.fixture(scope="session")
def mnist_model():
    return joblib.load(MODELS / "mnist-svm" / "model.joblib")


@pytest.fixture(scope="session")
def mushroom_model():
    model = xgb.XGBClassifier()
    model.load_model(MODELS / "mushroom-xgboost" / "model.json")
    return model


@pytest.fixture(scope="session")
def mushrooms() -> np.ndarray:
    rng = np.random.default_rng(7)
    return (rng.random((32, 126)) < 0.2).astype(np.float32)


def v2_body(x: np.ndarray, datatype: str = "FP32", name: str = "input-0", **extra: Any) -> dict:
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": datatype,
                        "data": x.ravel().tolist()}], **extra}


def output(reply: requests.Response, name: str = "predict") -> np.ndarray:
    assert reply.status_code == 200, reply.text
    for out in reply.json()["outputs"]:
        if out["name"] == name:
            return np.asarray(out["data"]).reshape(out["shape"])
    raise AssertionError(f"no output {name!r} in {reply.text}")
