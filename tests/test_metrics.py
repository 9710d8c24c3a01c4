"""The metrics in process: counts reach every reader; the files live as the workers do.

No gunicorn here. prometheus-client chooses between memory and the
multiprocess files once, when first imported: this process counts in memory,
and the "workers" that write files are short Python processes started with
PROMETHEUS_MULTIPROC_DIR set. Reading and folding the files needs no such
mode, so the test process does both itself.
"""
from __future__ import annotations

import logging
import os
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from app.metrics import Metrics
from app.metrics.files import FILE_PREFIXES, FILE_ROOM, FILE_SIZE, RETIRED

ROOT = Path(__file__).resolve().parents[1]
KEY = ("m", "1")

#: a worker's life: it reserves its files, answers two requests (3 rows, then
#: 1 in a batch of two model calls), fails one and loads its model once
WORKER = """
import os, sys
from pathlib import Path
from app.metrics import Metrics

metrics = Metrics(Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
assert metrics.reserve()
for rows, executions in ((3, 1), (1, 2)):
    with metrics.track("m", "1") as track:
        track.rows, track.executions = rows, executions
        for _ in range(3):
            track.phase_done()
try:
    with metrics.track("m", "1"):
        raise ValueError
except ValueError:
    pass
metrics.control_call("m", "load", 0.2, ok=True)
print(os.getpid())
"""


def run_worker(folder: Path) -> int:
    """One worker that counts into ``folder`` and exits; its pid."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(folder))
    out = subprocess.run([sys.executable, "-c", WORKER], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def counted(metrics: Metrics) -> dict:
    """What Triton's statistics and the console's traffic say of ``KEY``."""
    stats = metrics.statistics([KEY])[0]
    inference = stats["inference_stats"]
    traffic = metrics.traffic()[KEY]
    return {"rows": stats["inference_count"], "executions": stats["execution_count"],
            "successes": inference["success"]["count"], "failures": inference["fail"]["count"],
            "infer phases": inference["compute_infer"]["count"],
            "last": stats["last_inference"], "traffic": {k: traffic[k] for k in (
                "requests", "failures", "rows")}, "in buckets": traffic["buckets"][-1]}


def expected(workers: int) -> dict:
    return {"rows": 4 * workers, "executions": 3 * workers, "successes": 2 * workers,
            "failures": workers, "infer phases": 2 * workers,
            "traffic": {"requests": 2 * workers, "failures": workers, "rows": 4 * workers},
            "in buckets": 2 * workers}


def without_last(found: dict) -> dict:
    return {k: v for k, v in found.items() if k != "last"}


def test_counts_held_by_this_process_reach_every_reader() -> None:
    """Held counts (the worker would write them after the burst) are
    written by the reading itself: statistics, traffic and /metrics agree."""
    metrics = Metrics(None)
    for rows, executions in ((3, 1), (1, 2)):
        with metrics.track(*KEY, hold=True) as track:
            track.rows, track.executions = rows, executions
            for _ in range(3):
                track.phase_done()
    with pytest.raises(ValueError), metrics.track(*KEY, hold=True):
        raise ValueError
    metrics.control_call("m", "load", 0.2, ok=True)

    found = counted(metrics)
    assert without_last(found) == expected(1)
    assert found["last"] > 0
    rows = [SimpleNamespace(name="m", version="1", state="READY"),
            SimpleNamespace(name="n", version="2", state="FAILED")]
    text = metrics.exposition(lambda: rows).decode()
    for line in ('depot_inference_rows_total{model="m",version="1"} 4.0',
                 'depot_inference_request_duration_seconds_count{model="m",version="1"} 2.0',
                 'depot_inference_request_failures_total{model="m",version="1"} 1.0',
                 'depot_model_control_duration_seconds_count{action="load",model="m",'
                 'outcome="success"} 1.0',
                 "depot_models_loaded 1.0",
                 'depot_model_state{model="n",state="FAILED",version="2"} 1.0'):
        assert line in text.splitlines(), line


def test_a_dead_workers_counts_stay_counted_once_its_files_are_folded(tmp_path) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    first, second = run_worker(folder), run_worker(folder)
    metrics = Metrics(folder)
    before = counted(metrics)
    assert without_last(before) == expected(2)

    metrics.retire(first)
    assert counted(metrics) == before
    metrics.retire(second)
    assert counted(metrics) == before, "summed, and the last inference is the later one"
    assert sorted(p.name for p in folder.glob("*.db")) == sorted(
        f"{prefix}_{RETIRED}.db" for prefix in FILE_PREFIXES)
    control = 'depot_model_control_duration_seconds_count{action="load",model="m",' \
              'outcome="success"} 2.0'
    assert control in metrics.exposition(list).decode().splitlines()


def allocated(path: Path) -> bool:
    """Every byte of ``path`` has a block behind it: writing it cannot SIGBUS."""
    stat = path.stat()
    return stat.st_blocks * 512 >= stat.st_size


def test_reserve_allocates_each_file_before_use_and_room_as_it_fills(tmp_path) -> None:
    metrics = Metrics(tmp_path)
    assert metrics.reserve()
    files = [tmp_path / f"{prefix}_{os.getpid()}.db" for prefix in FILE_PREFIXES]
    assert [(f.stat().st_size, allocated(f)) for f in files] == [(FILE_SIZE, True)] * 3

    # a file prometheus-client has filled to less than FILE_ROOM from its end
    used = FILE_SIZE - FILE_ROOM // 2
    with open(files[0], "r+b") as handle:
        handle.write(struct.pack("i", used))
    assert metrics.reserve()
    assert files[0].stat().st_size == 2 * FILE_SIZE and allocated(files[0])
    assert not list(tmp_path.glob(".*.part")), "no file made aside is left behind"


def test_a_process_that_cannot_allocate_its_files_counts_nothing_and_serves_on(
        tmp_path, caplog) -> None:
    # a folder that is not there stands in for a full one: both are an
    # OSError from the allocation (tests/test_faults.py fills a real one)
    metrics = Metrics(tmp_path / "missing")
    with caplog.at_level(logging.WARNING, logger="depot.metrics"):
        with metrics.track(*KEY) as track:
            track.rows = 1
        metrics.control_call("m", "load", 0.2, ok=True)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        f"worker {os.getpid()} counts no metrics from now on"], "said once"
    assert not [s for family in metrics.registry.collect() for s in family.samples
                if s.labels.get("model") == "m"]
