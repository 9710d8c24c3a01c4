"""The registry in-process: two Registry objects on one state folder behave
like two workers (each has its own cache, both share the store)."""
from __future__ import annotations

import numpy as np
import pytest

from app.errors import LoadFailed, ModelNotFound, ModelNotReady
from app.registry import LOAD_INTERRUPTED, Registry
from app.settings import Settings
from app.store.sqlite import SQLiteStore as Store
from conftest import MODELS


@pytest.fixture
def workers(tmp_path):
    settings = Settings(models=MODELS, state_dir=tmp_path / "state")
    first = Registry.open(settings)
    first.startup()
    return first, Registry.open(settings)


def test_every_write_moves_the_change_mark(tmp_path):
    writer, reader = Store(tmp_path), Store(tmp_path)
    marks = {reader.change_mark()}
    writer.set_meta("a", "1")
    marks.add(reader.change_mark())
    writer.reset()
    marks.add(reader.change_mark())
    assert len(marks) == 3


def test_a_staged_copy_outlives_the_drop_of_the_last_one(workers):
    """The master stages the next generation while the row says LOADING and
    it still holds the generation before (its sync had not run since the
    unload): that sync drops the old copy, and the staged one serves once
    published, with nothing built (workers forked meanwhile inherit it)."""
    master, worker = workers
    ready = master.row("mnist-svm")
    worker.unload("mnist-svm")
    unloaded = worker.row("mnist-svm", ready.version)
    worker.store.put(unloaded.replace(state="LOADING", reason="loading"))
    new = ready.replace(generation=unloaded.generation + 1)
    master.stage(new)
    builds = master.cache.builds
    master.sync()
    assert master.cache.generation((new.name, new.version)) is None  # the old copy is gone
    worker.store.put(new)
    row, runtime = master.get_ready("mnist-svm")
    assert row.generation == new.generation and master.cache.builds == builds
    assert runtime.predict(np.zeros((1, 64), np.float32), runtime.outputs)["predict"].shape == (1,)


def test_unload_and_load_reach_the_other_worker_at_once(workers):
    a, b = workers
    assert b.get_ready("mnist-svm")[1].outputs == ["predict"]
    a.unload("mnist-svm")
    with pytest.raises(ModelNotReady, match="unloaded"):
        b.get_ready("mnist-svm")
    a.load("mnist-svm")
    row, runtime = b.get_ready("mnist-svm")
    assert row.state == "READY" and runtime is not a.get_ready("mnist-svm")[1]


def test_reload_publishes_a_new_generation(workers):
    a, b = workers
    first = b.get_ready("mushroom-xgboost")
    a.load("mushroom-xgboost")
    second = b.get_ready("mushroom-xgboost")
    assert second[0].generation == first[0].generation + 1
    assert second[1] is not first[1]


def test_versions_and_unknown_names(workers):
    a, _ = workers
    assert a.get_ready("mnist-svm", "v0.1.0")[0].version == "v0.1.0"
    with pytest.raises(ModelNotFound):
        a.get_ready("mnist-svm", "v9")
    with pytest.raises(ModelNotFound):
        a.get_ready("nope")
    with pytest.raises(ModelNotFound):
        a.load("nope")


def test_sync_drops_and_loads_eagerly(workers):
    a, b = workers
    b.sync()
    assert set(b.cache.keys()) == {("mnist-svm", "v0.1.0"), ("mushroom-xgboost", "v0.1.0")}
    a.unload("mnist-svm")
    b.sync()
    assert set(b.cache.keys()) == {("mushroom-xgboost", "v0.1.0")}


def test_failed_load_is_recorded(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bad.joblib").write_bytes(b"garbage")
    registry = Registry.open(Settings(models=tmp_path / "models", state_dir=tmp_path / "s"))
    registry.startup()
    (row,) = registry.index()
    assert (row.name, row.state) == ("bad", "UNAVAILABLE")
    assert row.reason.startswith("load failed: ")
    with pytest.raises(LoadFailed):
        registry.load("bad")


def test_startup_replaces_tables_an_older_depot_left(tmp_path):
    import sqlite3

    state = tmp_path / "state"
    state.mkdir()
    with sqlite3.connect(state / "registry.sqlite3") as db:
        db.execute("CREATE TABLE models (name TEXT PRIMARY KEY, state TEXT)")
    registry = Registry.open(Settings(models=MODELS, state_dir=state))
    registry.startup()
    assert {r.state for r in registry.index()} == {"READY"}


def test_a_restart_adopts_the_state_and_clears_what_no_row_serves(tmp_path):
    settings = Settings(models=MODELS, state_dir=tmp_path / "state")
    first = Registry.open(settings)
    first.startup()
    first.unload("mnist-svm")
    # the loader of mnist died half-way, and a copy of an old generation was left behind
    row = first.store.get("mnist-svm", "v0.1.0")
    first.store.put(row.replace(state="LOADING", reason="loading"))
    partial = first.snapshots.folder("mnist-svm", "v0.1.0", row.generation + 1)
    stale = first.snapshots.folder("mushroom-xgboost", "v0.1.0", 0)
    for folder in (partial, stale):
        folder.mkdir(parents=True)
        (folder / "model.joblib").write_bytes(b"half")
    ready = first.store.get("mushroom-xgboost", "v0.1.0")

    second = Registry.open(settings)
    assert not second.store.is_fresh()
    second.startup()
    mnist = second.store.get("mnist-svm", "v0.1.0")
    assert (mnist.state, mnist.reason) == ("UNAVAILABLE", LOAD_INTERRUPTED)
    assert second.store.get("mushroom-xgboost", "v0.1.0") == ready
    assert second.cache.generation(("mushroom-xgboost", "v0.1.0")) == ready.generation
    assert [str(p) for p in settings.state_dir.glob("snapshots/*/*/*")] == [str(second.snapshots.path(ready))]
