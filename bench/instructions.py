"""Instructions a request costs, counted by valgrind's callgrind: Depot's
WSGI app (with its access line and counts, as its worker writes them) and the
model floor's app, in-process, on the same body.

A rate moves with the machine's load and with each process's memory layout
(identical Depot processes differ by a few percent: docs/benchmark.md); a
count of instructions does not, so a change of 1% in Depot's own work shows
as 1%. It does not see the kernel, caches or stalls: it says what Depot asks
the CPU to do, not how long that takes.

usage: python bench/instructions.py SAMPLES_DIR [REQUESTS]
It runs itself under valgrind and prints a JSON line per case.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CASES = [("mnist-svm", 1), ("mnist-svm", 64), ("mushroom-xgboost", 1), ("mushroom-xgboost", 64)]
WARMUP = 20
#: callgrind dumps its counts each time this C function is entered: the
#: inner process calls os.sched_yield() between sections, and nothing else does
MARK = "os_sched_yield"


def sections(samples: Path, requests: int) -> None:
    """Run each case's requests through both apps, marking the sections."""
    sys.path[:0] = [str(ROOT), str(BENCH)]
    from werkzeug.test import EnvironBuilder

    import model_floor_app
    import phases
    from app import create_app
    from app.metrics import counters
    from app.settings import Settings
    from app.environ import HOLDS_WRITES

    # The worker writes held counts once a burst ends; valgrind runs ~50x
    # slower, where the 0.1 s bound would write them every few requests.
    # They are written every 64 requests here, as the access lines are.
    counters.WRITE_EVERY = float("inf")
    state = Path(tempfile.mkdtemp(prefix="depot-instructions-"))
    app = create_app(Settings(models=ROOT / "models", state_dir=state, watch=False,
                              sync_interval=1e9))
    registry = app.extensions["depot"].registry
    registry.startup()
    counts = app.extensions["depot"].metrics
    logger = phases.access_logger()
    status = SimpleNamespace(status="200 OK")
    took = timedelta(microseconds=500)
    floor = model_floor_app.app
    labels = []
    for model, rows in CASES:
        registry.load(model)
        body = (samples / f"{model}-{rows}.json").read_bytes()
        environ = EnvironBuilder(path=f"/v2/models/{model}/infer", method="POST", data=body,
                                 content_type="application/json").get_environ()
        environ[HOLDS_WRITES] = True
        n = requests if rows == 1 else max(1, requests // 4)

        def depot(i: int) -> None:
            served = dict(environ, **{"wsgi.input": io.BytesIO(body)})
            for _ in app.wsgi_app(served, lambda *a: None):
                pass
            logger.access(status, None, served, took)  # written every 64th
            if i % 64 == 63:
                counts.write()

        def model_floor(i: int) -> None:
            for _ in floor.wsgi_app(dict(environ, **{"wsgi.input": io.BytesIO(body)}),
                                    lambda *a: None):
                pass

        for server, request in (("depot", depot), ("model floor", model_floor)):
            for i in range(WARMUP):
                request(i)
            os.sched_yield()  # the counts so far are dumped: the next are this section's
            for i in range(n):
                request(i)
            os.sched_yield()
            labels.append((model, rows, server, n))
    print(json.dumps(labels), flush=True)


def main(samples: Path, requests: int) -> None:
    with tempfile.TemporaryDirectory(prefix="depot-callgrind-") as out:
        inner = subprocess.run(
            ["valgrind", "--tool=callgrind", f"--dump-before={MARK}",
             f"--callgrind-out-file={out}/callgrind.out", sys.executable, __file__,
             "--inner", str(samples), str(requests)],
            capture_output=True, text=True, check=True,
            env={**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1",
                 "OPENBLAS_NUM_THREADS": "1"})
        labels = json.loads(inner.stdout.strip().splitlines()[-1])
        dumps = sorted(Path(out).glob("callgrind.out.*"), key=lambda p: int(p.suffix[1:]))
        totals = [next(int(line.split()[1]) for line in p.read_text().splitlines()
                       if line.startswith("totals:")) for p in dumps]
    # dump k holds the counts since dump k-1: the measured sections are
    # every second one after the first (startup, then warm-up, measure, ...)
    measured = totals[1::2]
    per_case: dict[tuple[str, int], dict[str, float]] = {}
    for (model, rows, server, n), total in zip(labels, measured):
        per_case.setdefault((model, rows), {})[server] = total / n
    for (model, rows), by in per_case.items():
        print(json.dumps({"model": model, "rows": rows, "depot": round(by["depot"]),
                          "model floor": round(by["model floor"]),
                          "ratio": round(by["model floor"] / by["depot"], 4)}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--inner"]:
        sections(Path(sys.argv[2]), int(sys.argv[3]))
    else:
        main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 200)
