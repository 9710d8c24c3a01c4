"""Memory of a model loaded through the repository API, against a preload.

usage: python bench/memory.py [--home DIR] [--baseline REF] [--skip-mlserver]

A random forest made here (not committed) is served by Depot with 1, 2, 4
and 8 workers: PSS of the whole process tree with the forest preloaded,
after a hot load, after 3 reloads, and the peak during the hot load; the
seconds a load call takes; and the p99 of requests to another model made
while the forest reloads. The same runs are made with Depot as it was at
``--baseline`` (before the gunicorn master loaded models: each worker loaded
its own copy), from a git worktree, in the same sitting; and MLServer 1.7.1
serves the same forest with ``parallel_workers`` 1, 2 and 4.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import joblib
import numpy as np
from sklearn.ensemble import RandomForestClassifier

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from bench import GUNICORN, PORT, ROOT, Server, ensure_mlserver, pss_mb, start, stop  # noqa: E402

WORKERS = (1, 2, 4, 8)
FOREST = "forest"
#: the last commit where every worker loaded its own copy
BASELINE = "62eef0b"
URL = f"http://127.0.0.1:{PORT}"


def make_forest(folder: Path) -> Path:
    """About 120 MB on disk and in memory: large beside what a worker
    process holds of its own (about 30 MB), as models worth sharing are."""
    rng = np.random.default_rng(0)
    x = rng.random((12000, 64)).astype(np.float32)
    forest = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=0)
    forest.fit(x, rng.integers(0, 10, len(x)))
    folder.mkdir(parents=True, exist_ok=True)
    joblib.dump(forest, folder / "model.joblib")
    return folder / "model.joblib"


LOAD_PEAK = """
import ctypes, resource, sys
import joblib, sklearn.ensemble
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")) / 1024
before = rss()
model = joblib.load(sys.argv[1])
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the load freed goes back
print(peak - before, rss() - before)
"""


def load_peak(forest: Path) -> tuple[float, float]:
    """MB above its start at the peak of one ``joblib.load`` in a process of
    its own, and once loaded: the floor of any design's peak during a load
    (the unpickler holds every tree's arrays while scikit-learn copies them)."""
    out = subprocess.run([sys.executable, "-c", LOAD_PEAK, str(forest)], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[0]), float(out[1])


def post(path: str, body: bytes = b"") -> tuple[int, float]:
    began = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(URL + path, data=body),
                                    timeout=300) as r:
            r.read()
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - began


def steady(pid: int) -> float:
    """PSS once two readings half a second apart agree (at most 15 s)."""
    last = pss_mb(pid)
    for _ in range(30):
        time.sleep(0.5)
        now = pss_mb(pid)
        if abs(now - last) < 0.02 * now:
            return now
        last = now
    return last


def peak_during(pid: int, call):
    peak, running = [0.0], threading.Event()

    def sample() -> None:
        while running.is_set():
            peak[0] = max(peak[0], pss_mb(pid))
            time.sleep(0.02)

    running.set()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = call()
    finally:
        running.clear()
        sampler.join(timeout=10)
    return peak[0], result


def traffic_p99(during) -> float:
    """p99 (ms) of mnist-svm requests, one at a time, while ``during`` runs."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                   "data": [0.0] * 64}]}).encode()
    times, running = [], threading.Event()

    def client() -> None:
        while running.is_set():
            status, took = post("/v2/models/mnist-svm/infer", body)
            times.append(took * 1000 if status == 200 else float("inf"))

    running.set()
    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    try:
        during()
    finally:
        running.clear()
        thread.join(timeout=30)
    return statistics.quantiles(times, n=100)[98] if len(times) > 2 else float("nan")


def depot(tree: Path, label: str, models: Path, state: Path, workers: int) -> Server:
    shutil.rmtree(state, ignore_errors=True)
    return Server(label, GUNICORN + ["-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{PORT}",
                                     "--workers", str(workers)], cwd=tree,
                  env={"DEPOT_MODELS": str(models), "DEPOT_STATE_DIR": str(state)})


def measure_depot(tree: Path, label: str, home: Path, forest: Path, workers: int) -> dict:
    """Preloaded, then hot-loaded and reloaded, on one design."""
    found: dict = {}
    preload = home / "models-preload"
    shutil.rmtree(preload, ignore_errors=True)
    shutil.copytree(forest.parent, preload / FOREST)
    shutil.copytree(ROOT / "models" / "mnist-svm", preload / "mnist-svm")
    server = depot(tree, label, preload, home / "state", workers)
    proc = start(server, home / f"{label}-{workers}-preload.log")
    try:
        found["preloaded"] = steady(proc.pid)
        found["cold start s"] = server.cold_start
    finally:
        stop(proc)

    hot = home / "models-hot"
    shutil.rmtree(hot, ignore_errors=True)
    shutil.copytree(ROOT / "models" / "mnist-svm", hot / "mnist-svm")  # scikit-learn, preloaded
    server = depot(tree, label, hot, home / "state", workers)
    proc = start(server, home / f"{label}-{workers}-hot.log")
    try:
        empty = steady(proc.pid)
        shutil.copytree(forest.parent, hot / FOREST)
        for _ in range(200):
            if FOREST.encode() in urllib.request.urlopen(
                    urllib.request.Request(URL + "/v2/repository/index", data=b"{}")).read():
                break
            time.sleep(0.05)
        peak, (status, took) = peak_during(proc.pid, lambda: post(f"/v2/repository/models/{FOREST}/load"))
        assert status == 200, status
        found["hot load s"] = took
        found["after hot load"] = steady(proc.pid)
        # the design before this one built the workers' copies after the
        # call returned: its peak is what it settles at
        found["peak"] = max(peak, found["after hot load"])
        reloads = []
        found["p99 ms during a reload"] = traffic_p99(
            lambda: reloads.append(post(f"/v2/repository/models/{FOREST}/load")[1]))
        for _ in range(2):
            reloads.append(post(f"/v2/repository/models/{FOREST}/load")[1])
        found["reload s"] = statistics.median(reloads)
        found["after 3 reloads"] = steady(proc.pid)
        found["no forest"] = empty
        one = found["preloaded"] - empty  # one copy, held by the master and shared
        found["peak copies"] = (found["peak"] - empty) / one if one > 0 else None
        found["p99 ms, no reload"] = traffic_p99(lambda: time.sleep(2))
    finally:
        stop(proc)
    return found


def measure_mlserver(mlserver: Path, home: Path, forest: Path, workers: int) -> float:
    models = home / "mlserver-forest"
    shutil.rmtree(models, ignore_errors=True)
    shutil.copytree(forest.parent, models / FOREST)
    (models / FOREST / "model-settings.json").write_text(json.dumps({
        "name": FOREST, "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"}}))
    env = {"MLSERVER_HTTP_PORT": str(PORT), "MLSERVER_GRPC_PORT": "8081",
           "MLSERVER_METRICS_PORT": "8082", "MLSERVER_PARALLEL_WORKERS": str(workers)}
    server = Server(f"mlserver-{workers}", [str(mlserver), "start", str(models)], env=env,
                    cwd=home)
    proc = start(server, home / f"mlserver-{workers}.log")
    try:
        return steady(proc.pid)
    finally:
        stop(proc)


def baseline_tree(home: Path, ref: str) -> Path:
    tree = home / f"depot-{ref}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), ref],
                       check=True, capture_output=True)
    return tree


def report(results: dict, mlserver: dict) -> str:
    lines = ["| design | workers | preloaded MB | after a hot load MB (x preload) | after 3 reloads "
             "MB (x preload) | no forest MB | peak during the hot load MB (copies of the forest above no forest) "
             "| hot load s | reload s | p99 ms during a reload (without) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (label, workers), r in results.items():
        pre = r["preloaded"]
        lines.append(
            f"| {label} | {workers} | {pre:.0f} | {r['after hot load']:.0f} "
            f"({r['after hot load'] / pre:.2f}) | {r['after 3 reloads']:.0f} "
            f"({r['after 3 reloads'] / pre:.2f}) | {r['no forest']:.0f} | "
            f"{r['peak']:.0f} ({r['peak copies'] or 0:.2f}) | "
            f"{r['hot load s']:.2f} | {r['reload s']:.2f} | {r['p99 ms during a reload']:.1f} "
            f"({r['p99 ms, no reload']:.1f}) |")
    if mlserver:
        lines += ["", "| MLServer 1.7.1 parallel_workers | PSS MB, forest loaded |", "|---|---|"]
        lines += [f"| {w} | {mb:.0f} |" for w, mb in mlserver.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--home", type=Path, default=Path("/tmp/depot-bench"))
    parser.add_argument("--baseline", default=BASELINE)
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--workers", type=int, nargs="*", default=list(WORKERS))
    args = parser.parse_args()
    home = args.home / "memory"
    home.mkdir(parents=True, exist_ok=True)
    forest = make_forest(home / "forest")
    peak, held = load_peak(forest)
    print(f"# forest: {forest.stat().st_size / 1e6:.0f} MB on disk; one joblib.load in a "
          f"process of its own peaks at {peak:.0f} MB and holds {held:.0f} MB "
          f"({peak / held:.2f} copies at its peak)", flush=True)
    designs = {"Depot": ROOT, f"Depot at {args.baseline} (each worker loads)":
               baseline_tree(args.home, args.baseline)}
    results = {}
    for workers in args.workers:
        for label, tree in designs.items():
            print(f"# {label}, {workers} workers", flush=True)
            results[(label, workers)] = measure_depot(tree, label.split()[0] + tree.name,
                                                      home, forest, workers)
            print(f"#   {results[(label, workers)]}", flush=True)
    mlserver = {}
    if not args.skip_mlserver:
        binary = ensure_mlserver(args.home)
        for workers in (1, 2, 4):
            print(f"# MLServer, parallel_workers={workers}", flush=True)
            mlserver[workers] = measure_mlserver(binary, home, forest, workers)
    table = report(results, mlserver)
    (home / "RESULTS.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
