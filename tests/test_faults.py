"""No client and no model can take the server down: a loader that hangs, a
full or read-only state folder, a state database deleted under a running
deployment. Each fault is loud (a 409, 507 or 503 with the reason, readiness
says why), and loaded models go on serving through all of them."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from app.registry import snapshots as snapshot_files
from app.errors import InsufficientStorage, ModelBusy, StateUnavailable
from app.registry import LOAD_INTERRUPTED, Registry
from app.settings import Settings
from app.store import LOADING, key
from app.store.sqlite import SQLiteStore as Store
from conftest import MODELS, output, slow_artifact, spread, v2_body, wait_until

XGB = "mushroom-xgboost"
SVM = "mnist-svm"


def timed(call):
    start = time.monotonic()
    result = call()
    return result, time.monotonic() - start


def all_workers(server, count: int = 4) -> set[int]:
    """The worker pids once all ``count`` have booted (readiness needs one)."""
    return wait_until(lambda: len(pids := server.worker_pids()) == count and pids, timeout=30)


def lock_holder(state: Path, name: str) -> int | None:
    """The pid holding a model's control-plane lock, from /proc/locks."""
    path = state / "locks" / f"{key(name)}.lock"
    if not path.exists():
        return None
    inode = str(path.stat().st_ino)
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" in fields and "->" not in fields and fields[5].split(":")[-1] == inode:
            return int(fields[4])
    return None


# -- in-process: the store and the registry ------------------------------------------------

def test_a_held_lock_gives_up_at_its_deadline(tmp_path):
    store = Store(tmp_path, lock_timeout=0.3)
    store.set_meta("x", "1")
    (tmp_path / "locks").mkdir(exist_ok=True)
    with open(tmp_path / "locks" / f"{key('m')}.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another process's load, as the kernel sees it
        start = time.monotonic()
        with pytest.raises(ModelBusy, match="model 'm' is busy: another load or unload has "
                                            r"held it for 0.3 s; try again"):
            with store.lock("m"):
                pass
        assert 0.3 <= time.monotonic() - start < 1.0
    with store.lock("m"):  # free again
        pass


@pytest.fixture
def registry(tmp_path):
    settings = Settings(models=MODELS, state_dir=tmp_path / "state")
    registry = Registry.open(settings)
    registry.startup()
    return registry


def _partial_copy(registry, name, version, generation):
    folder = registry.snapshots.folder(name, version, generation)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "half-written.bin").write_bytes(b"\0" * 100)
    return folder


@pytest.mark.parametrize("repair", ["register", "load"])
def test_a_dead_loader_leaves_nothing_behind(registry, repair):
    """A LOADING row whose loader died, and its partial snapshot, are undone
    by the next call that holds the model's lock."""
    registry.unload(XGB)
    row = registry.store.get(XGB, "v0.1.0")
    registry.store.put(row.replace(state=LOADING, reason="loading"))
    partial = _partial_copy(registry, XGB, "v0.1.0", row.generation + 1)
    if repair == "register":
        (spec,) = registry.folder.find(XGB)
        registry.register(spec)
        row = registry.store.get(XGB, "v0.1.0")
        assert (row.state, row.reason) == ("UNAVAILABLE", LOAD_INTERRUPTED)
        assert not partial.exists()
    else:
        (row,) = registry.load(XGB)
        assert row.state == "READY"
        assert [p.name for p in partial.parent.iterdir()] == [str(row.generation)]
        assert not (partial / "half-written.bin").exists()


def test_a_refused_copy_leaves_the_row_as_it_was(registry, monkeypatch):
    def full(src, dst):  # half the bytes land, then the disk is full
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(errno.ENOSPC, "No space left on device")

    registry.unload(XGB)
    before = {r.name: r for r in registry.store.rows()}
    monkeypatch.setattr(snapshot_files, "_copy", full)
    for name in (SVM, XGB):
        with pytest.raises(InsufficientStorage, match="is full .No space left on device."):
            registry.load(name)
    after = {r.name: r for r in registry.store.rows()}
    assert after[SVM].state == "READY" and after[SVM].generation == before[SVM].generation
    assert after[XGB].state == "UNAVAILABLE" and "is full" in after[XGB].reason
    snapshots = registry.snapshots.root
    assert [p.parent.name for p in snapshots.glob("*/*/*")] == [str(after[SVM].generation)]


def test_a_deleted_database_is_refused_not_made_again(registry):
    store = registry.store
    store.path.rename(store.path.with_name("moved"))
    (store.path.with_name("moved")).rename(store.path)  # same file back: still ours
    store.check_identity()
    store.path.unlink()
    with pytest.raises(StateUnavailable, match="was deleted or replaced while Depot ran"):
        store.set_meta("x", "1")
    with pytest.raises(StateUnavailable):
        registry.index()
    assert "restart the deployment" in registry.unready_reason()
    refused = []

    def read():  # a new thread opens its own connection, as a new worker does
        try:
            store.rows()
        except StateUnavailable as e:
            refused.append(e)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join(timeout=10)
    assert refused and not store.path.exists()  # and no empty database in its place


# -- a live server: a hung loader --------------------------------------------------------

@pytest.mark.slow
def test_a_load_stuck_behind_a_stopped_loader_answers_409(make_server, digits, mnist_model):
    """A second load waits DEPOT_LOCK_TIMEOUT seconds, then answers 409;
    meanwhile the other models' index, readiness and inference stay fast."""
    with make_server(env={"DEPOT_LOCK_TIMEOUT": "2", "DEPOT_RESCAN_INTERVAL": "0.5"}) as server:
        (server.models / "slow.joblib").write_bytes(slow_artifact(8))
        wait_until(lambda: "slow" in server.index(), timeout=10)
        first: list[requests.Response] = []
        loader = threading.Thread(target=lambda: first.append(
            requests.post(f"{server.url}/v2/repository/models/slow/load", timeout=60)))
        loader.start()
        wait_until(lambda: server.index()["slow"]["state"] == "LOADING", timeout=10)
        pid = wait_until(lambda: lock_holder(server.state, "slow"), timeout=10)
        assert pid in server.worker_pids()
        os.kill(pid, signal.SIGSTOP)
        try:
            second: list[tuple[requests.Response, float]] = []
            caller = threading.Thread(target=lambda: second.append(timed(
                lambda: server.post("/v2/repository/models/slow/load"))))
            caller.start()
            expected = mnist_model.predict(digits[:2]).tolist()
            for _ in range(10):
                index, seconds = timed(server.index)
                assert index[SVM]["state"] == "READY" and seconds < 1.5
                ready, seconds = timed(lambda: server.get("/v2/health/ready"))
                assert ready.status_code == 200 and seconds < 1.5
                reply, seconds = timed(lambda: server.infer(SVM, v2_body(digits[:2])))
                assert output(reply).ravel().tolist() == expected and seconds < 1.5
            caller.join(timeout=20)
            ((busy, seconds),) = second
            assert busy.status_code == 409, busy.text
            assert busy.json()["error"] == ("model 'slow' is busy: another load or unload "
                                            "has held it for 2 s; try again")
            assert 1.9 < seconds < 6
            unload, seconds = timed(lambda: server.post("/v2/repository/models/slow/unload"))
            assert unload.status_code == 409 and seconds < 6
        finally:
            os.kill(pid, signal.SIGCONT)
        loader.join(timeout=30)
        assert first and first[0].status_code == 400  # the slow pickle loads None
        entry = wait_until(lambda: (e := server.index()["slow"])["state"] != "LOADING" and e)
        assert entry["state"] == "UNAVAILABLE"
        assert pid in server.worker_pids()


# -- a live server: a full state folder --------------------------------------------------

@contextlib.contextmanager
def tmpfs(folder: Path, size: str):
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Write zeros into ``folder`` until the disk says ENOSPC."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for chunk in (1 << 20, 4096):
            block = bytes(chunk)
            with contextlib.suppress(OSError):
                while os.write(fd, block):
                    pass
    finally:
        os.close(fd)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def test_a_full_state_folder_kills_no_worker(make_server, tmp_path, digits, mnist_model,
                                            mushrooms, mushroom_model):
    with tmpfs(tmp_path / "state", "2m") as state, make_server() as server:
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200
        workers = all_workers(server)
        filler = fill(state)
        expected = mnist_model.predict(digits[:2]).tolist()
        replies = spread(lambda: server.infer(SVM, v2_body(digits[:2])), 50)
        assert [r.status_code for r in replies] == [200] * 50
        assert all(output(r).ravel().tolist() == expected for r in replies)
        assert server.get("/metrics").status_code == 200

        ready = server.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json()["ready"] is False
        assert ready.json()["error"].startswith(f"the state folder {state} is full")
        for name, state_before in ((SVM, "READY"), (XGB, "UNAVAILABLE")):
            r = server.post(f"/v2/repository/models/{name}/load")
            assert r.status_code == 507, r.text
            assert r.json()["error"] == (
                f"load failed for model {name!r} version 'v0.1.0': the state folder {state} "
                "is full (No space left on device); free space there, then try again")
            assert server.index()[name]["state"] == state_before
        assert "LOADING" not in {e["state"] for e in server.index().values()}
        # no partial copy: the one snapshot left is the one mnist-svm serves
        (snapshot,) = (state / "snapshots").glob("*/*")
        assert [p.name for p in snapshot.iterdir()] == ["model.joblib"]

        assert server.worker_pids() == workers
        log = server.log.read_text()
        assert "SIGBUS" not in log and "was sent" not in log

        # a worker started on the full folder cannot allocate its metrics
        # files: it counts nothing, says so once, and serves
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(server.worker_pids() - workers) == 1
                   and len(server.worker_pids()) == 4, timeout=30)
        replies = spread(lambda: server.infer(SVM, v2_body(digits[:2])), 50)
        assert [r.status_code for r in replies] == [200] * 50
        wait_until(lambda: "counts no metrics from now on" in server.log.read_text())
        assert "SIGBUS" not in server.log.read_text()

        filler.unlink()
        wait_until(lambda: server.get("/v2/health/ready").status_code == 200, timeout=10)
        for name in (SVM, XGB):
            assert server.post(f"/v2/repository/models/{name}/load").status_code == 200
        got = output(server.infer(XGB, v2_body(mushrooms)))
        assert got.ravel().tolist() == mushroom_model.predict(mushrooms).tolist()


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` read-only from now on, for every path opened through it (a
    read-only bind mount over itself; files already open keep writing)."""
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount (needs root): {mounted.stderr.strip()}")
    try:
        for _ in range(10):  # remount now and then fails with "busy" while the mount settles
            remounted = subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)],
                                       capture_output=True, text=True)
            if remounted.returncode == 0:
                break
            time.sleep(0.2)
        else:
            pytest.skip(f"cannot remount read-only: {remounted.stderr.strip()}")
        yield folder
    finally:  # lazily: files opened read-only meanwhile are let go at their next use
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_a_read_only_state_folder_answers_503(make_server, digits, mnist_model):
    with make_server(workers=2) as server:
        with read_only(server.state):
            ready = server.get("/v2/health/ready")
            assert ready.status_code == 503
            assert ready.json()["error"] == (f"the state folder {server.state} is read-only; "
                                             "Depot cannot record loads")
            r = server.post(f"/v2/repository/models/{XGB}/unload")
            assert r.status_code == 503, r.text
            assert r.json()["error"].startswith(f"the state folder {server.state} is read-only")
            assert server.index()[XGB]["state"] == "READY"
            expected = mnist_model.predict(digits[:2]).tolist()
            for reply in spread(lambda: server.infer(SVM, v2_body(digits[:2])), 20):
                assert output(reply).ravel().tolist() == expected
        wait_until(lambda: server.get("/v2/health/ready").status_code == 200, timeout=10)
        assert server.post(f"/v2/repository/models/{XGB}/unload").status_code == 200


# -- a live server: the state database deleted or replaced ----------------------------------

def _replace(path: Path) -> None:
    twin = path.with_name(path.name + ".twin")
    twin.write_bytes(path.read_bytes())
    twin.rename(path)


@pytest.mark.parametrize("file, fault", [("registry.sqlite3", "deleted"),
                                         ("changes", "replaced")])
def test_a_lost_database_is_refused_never_served_as_two_truths(make_server, digits,
                                                               mnist_model, file, fault):
    with make_server() as server:
        workers = all_workers(server)
        before = server.index()
        path = server.state / file
        if fault == "deleted":
            path.unlink()
        else:
            _replace(path)
        reason = f"the state database {path} was deleted or replaced while Depot ran; " \
                 "restart the deployment"
        victim = next(iter(workers))
        os.kill(victim, signal.SIGKILL)  # gunicorn forks a new worker: it must not start afresh
        wait_until(lambda: len(server.worker_pids() - workers) == 1
                   and len(server.worker_pids()) == 4, timeout=30)
        expected = mnist_model.predict(digits[:2]).tolist()

        def probe():
            ready = requests.get(f"{server.url}/v2/health/ready", timeout=30)
            index = requests.post(f"{server.url}/v2/repository/index", timeout=30)
            reply = server.infer(SVM, v2_body(digits[:2]))
            return ready, index, reply

        for ready, index, reply in spread(probe, 40):
            assert ready.status_code == 503 and ready.json() == {"ready": False,
                                                                 "error": reason}
            assert index.status_code == 503 and index.json() == {"error": reason}
            if reply.status_code == 200:  # a worker that opened the database in time
                assert output(reply).ravel().tolist() == expected
            else:
                assert reply.status_code == 503 and reply.json() == {"error": reason}
        r = server.post(f"/v2/repository/models/{XGB}/unload")
        assert r.status_code == 503 and r.json()["error"] == reason
        assert before[XGB]["state"] == "READY"

        settled = server.worker_pids()
        time.sleep(2)  # no worker crash-loops: the same four are still there
        assert server.worker_pids() == settled
        log = server.log.read_text()
        assert log.count("was sent") == 1  # the SIGKILL above, and no other
        assert log.count("sync failed") <= len(settled)  # one line per worker, not a flood
        if fault == "deleted":
            assert not path.exists()  # no worker made an empty one in its place
