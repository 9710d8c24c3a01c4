"""Depot's benchmark: Depot, MLServer and the floors side by side, in one sitting.

usage: python bench/bench.py [--duration S] [--rounds N] [--pair-rounds N] [--warmup S]
                             [--home DIR] [--skip-mlserver] [--skip-postgres] [--reuse]
                             [--baseline REV]

Every server runs pinned to CPU 0 and wrk to CPU 1, on the bundled models
with generated request bodies (1 and 64 rows). Each starts alone first, for
its cold start and memory; then all run at once and take turns case by case,
a few seconds each, so that the machine's drift is shared (Depot and the
model floor, the closest ratio, then take more turns). For each case it
prints rps, p50 and p99, and the ratios that matter: Depot against MLServer
(its defaults, and ``parallel_workers=0``, its fastest) and against the
composite floor 1 / (1/transport-floor rps + in-process time). It also
measures each server's memory (PSS of the whole process tree) and cold start
(process start to ``/v2/health/ready`` = 200), the cost of the shared-state
check, and how soon a load or unload holds on every worker. Depot and the
model floor run as two identical processes each, taking turns side by side:
one process can be a few percent faster than another for a whole case, and
their ratio, reported too, says how far to trust Depot/model floor. Depot runs
on each store: SQLite in its state folder, and a private PostgreSQL cluster
(as the tests start it; skipped when PostgreSQL is not installed). Last, it
prints bench/phases.py's µs per phase and bench/instructions.py's
instructions a request, for Depot and the model floor. With ``--baseline
REV`` (``make bench`` gives the commit before), Depot as it was at REV runs
too, taking the paired turns beside today's, and a table says whether the
change lost rps or p99.

Throwaway installs (MLServer's venv, request bodies, logs) go to --home, outside
the git tree; wrk and valgrind come from Debian's packages.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
PYTHON = sys.executable
GUNICORN = [PYTHON, "-m", "gunicorn"]
MODELS = {"mnist-svm": 64, "mushroom-xgboost": 126}
CASES = [(m, rows, conc) for m in MODELS for rows in (1, 64) for conc in (1, 16)]
MLSERVER_PINS = ["mlserver==1.7.1", "mlserver-sklearn==1.7.1", "mlserver-xgboost==1.7.1",
                 "uvloop<0.22", "scikit-learn==1.9.1", "narwhals==2.23.0", "xgboost==3.2.0",
                 "numpy==2.4.6"]
SERVER_CPU, LOAD_CPU = "0", "1"
PORT = 8080
#: the order the servers take turns in: the ratios that matter most are
#: between neighbours
TURNS = ("depot", "model-floor", "depot-2", "model-floor-2", "depot-baseline",
         "mlserver-fastest", "depot-batched",
         "mlserver-batched", "depot-postgres", "depot-sync", "floor-keepalive", "floor",
         "floor-sync", "mlserver")
#: the servers of the closest ratio (Depot against the model floor, a few
#: percent apart, where turns of one second move by tens): after the turns
#: every server takes, these four (and Depot at --baseline) take
#: ``--pair-rounds`` more among themselves
PAIRED = TURNS[:5]


@dataclass
class Server:
    label: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    results: dict = field(default_factory=dict)
    cold_start: float | None = None
    pss_mb: float | None = None
    port: int = PORT


# -- set-up ----------------------------------------------------------------------------

def ensure_tool(tool: str) -> None:
    """A command from Debian's package of the same name (wrk, valgrind)."""
    if shutil.which(tool):
        return
    print(f"# installing {tool} from Debian's packages", flush=True)
    subprocess.run(["apt-get", "install", "-y", "-q", tool], check=False,
                   stdout=subprocess.DEVNULL)
    if not shutil.which(tool):
        subprocess.run(["apt-get", "update", "-q"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-q", tool], check=True,
                       stdout=subprocess.DEVNULL)


def ensure_mlserver(home: Path) -> Path:
    venv = home / "mlserver-venv"
    marker = venv / ".installed"  # holds the pins it was installed with
    if not marker.exists() or marker.read_text() != " ".join(MLSERVER_PINS):
        print("# installing MLServer 1.7.1 into", venv, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run(pip + ["--upgrade", "pip"], check=True)
        subprocess.run(pip + MLSERVER_PINS, check=True)
        marker.write_text(" ".join(MLSERVER_PINS))
    return venv / "bin" / "mlserver"


def make_samples(folder: Path) -> None:
    """Request bodies: digits rows for mnist-svm, sparse 0/1 rows for the mushrooms."""
    folder.mkdir(parents=True, exist_ok=True)
    digits = load_digits().data.astype(np.float32)
    rng = np.random.default_rng(0)
    mushrooms = (rng.random((64, 126)) < 0.17).astype(np.float32)
    for name, data in (("mnist-svm", digits), ("mushroom-xgboost", mushrooms)):
        for rows in (1, 64):
            x = data[:rows]
            body = {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP32",
                                "data": x.ravel().tolist()}]}
            (folder / f"{name}-{rows}.json").write_text(json.dumps(body))


# -- processes -----------------------------------------------------------------------------

def port_free(port: int = PORT) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def ready(port: int = PORT) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def start(server: Server, log: Path) -> subprocess.Popen:
    deadline = time.monotonic() + 30
    while not port_free(server.port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"port {server.port} is still taken")
        time.sleep(0.1)
    env = {**os.environ, **server.env}
    began = time.monotonic()
    proc = subprocess.Popen(["taskset", "-c", SERVER_CPU, *server.command], cwd=server.cwd,
                            env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = began + 120
    while not ready(server.port):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            raise RuntimeError(f"{server.label} did not start; see {log}")
        time.sleep(0.02)
    server.cold_start = time.monotonic() - began
    return proc


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def tree(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-s", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()] or [pid]


def pss_mb(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system) used so far by a server: every process of
    its session, every thread."""
    ticks = 0
    for member in tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(url: str, body: Path, conc: int, seconds: float) -> dict:
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t", "1", "-c", str(conc), "-d", f"{max(1, round(seconds))}s",
         "--latency", "-s", str(BENCH / "post.lua"), url, "--", str(body)],
        capture_output=True, text=True).stdout
    found = re.search(r"BENCH (.*)", out)
    if not found:
        return {"rps": 0.0, "p50": float("nan"), "p99": float("nan"), "bad": -1}
    fields = dict(kv.split("=") for kv in found.group(1).split())
    return {"rps": int(fields["requests"]) / float(fields["seconds"]),
            "requests": int(fields["requests"]),
            "p50": float(fields["p50"]), "p99": float(fields["p99"]),
            "bad": int(fields["non200"]) + int(fields["errors"])}


def alone(server: Server, samples: Path, home: Path) -> None:
    """Cold start, and peak PSS over a second of each case, with no other
    server running (PSS splits pages shared with other processes)."""
    print(f"# {server.label}: cold start and memory", flush=True)
    proc = start(server, home / f"{server.label.replace(' ', '_')}.log")
    try:
        peak = pss_mb(proc.pid)
        for model, rows, conc in CASES:
            wrk(f"http://127.0.0.1:{server.port}/v2/models/{model}/infer",
                samples / f"{model}-{rows}.json", conc, 1)
            peak = max(peak, pss_mb(proc.pid))
        server.pss_mb = peak
    finally:
        stop(proc)


def interleaved(servers: list[Server], samples: Path, home: Path,
                args: argparse.Namespace, paired: frozenset[str] = frozenset()) -> None:
    """Throughput and latency with every server running (each on its port,
    all on the server CPU), case by case, the servers taking turns in
    ``args.rounds`` short runs each: this machine's speed drifts by tens of
    percent over minutes, and turns a few seconds apart share the drift, so
    the ratios between servers hold. Then the servers labelled in ``paired``
    take ``args.pair_rounds`` more turns among themselves."""
    procs = []
    try:
        for server in servers:
            cold = server.cold_start
            procs.append(start(server, home / f"{server.label.replace(' ', '_')}-turns.log"))
            server.cold_start = cold  # the one measured alone
        for model, rows, conc in CASES:
            body = samples / f"{model}-{rows}.json"
            runs: dict[str, list[dict]] = {s.label: [] for s in servers}
            every = list(zip(servers, procs))
            closest = [(s, p) for s, p in every if s.label in paired]
            for server in servers:
                wrk(f"http://127.0.0.1:{server.port}/v2/models/{model}/infer", body, conc,
                    args.warmup)
            for turn in range(args.rounds + (args.pair_rounds if closest else 0)):
                pairs = every if turn < args.rounds else closest
                # forward, then backward: no server always goes first (and
                # meets what the one before left), and neighbours in the list
                # (Depot and the model floor) always run seconds apart
                for server, proc in pairs if turn % 2 == 0 else pairs[::-1]:
                    used = cpu_seconds(proc.pid)
                    run = wrk(f"http://127.0.0.1:{server.port}/v2/models/{model}/infer", body,
                              conc, args.duration / args.rounds)
                    run["cpu_us"] = ((cpu_seconds(proc.pid) - used) * 1e6 / run["requests"]
                                     if run["requests"] else float("nan"))
                    runs[server.label].append(run)
            for server in servers:
                got = runs[server.label]
                server.results[(model, rows, conc)] = {
                    "rps": statistics.median(r["rps"] for r in got),
                    "p50": statistics.median(r["p50"] for r in got),
                    "p99": statistics.median(r["p99"] for r in got),
                    "bad": sum(r["bad"] for r in got),
                    "cpu_us": statistics.median(r["cpu_us"] for r in got),
                    "turns": [r["rps"] for r in got]}
                r = server.results[(model, rows, conc)]
                print(f"#   {server.label}: {model} rows={rows} conc={conc}: {r['rps']:.0f} rps, "
                      f"p99 {r['p99']:.2f} ms, bad {r['bad']}", flush=True)
    finally:
        for proc in procs:
            stop(proc)


# -- Depot-only measurements ------------------------------------------------------------

def depot_server(label: str, home: Path, workers: int, *extra: str,
                 state_url: str | None = None, port: int = PORT,
                 models: Path | None = None, state: str = "state") -> Server:
    if state_url:
        state = f"state-pg-{port}"
    env = {"DEPOT_STATE_DIR": str(home / state)}
    if state_url:
        env["DEPOT_STATE_URL"] = state_url
    if models is not None:  # its own models, read afresh (a kept state keeps old settings)
        shutil.rmtree(home / f"state-{models.name}", ignore_errors=True)
        env = {"DEPOT_STATE_DIR": str(home / f"state-{models.name}"), "DEPOT_MODELS": str(models)}
    return Server(label, GUNICORN + ["-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}",
                                     "--workers", str(workers), *extra], env=env, port=port)


def batched_models(home: Path, name: str = "batched-models", **settings: float) -> Path:
    """The bundled models with ``settings`` (``max_batch_size`` 16 unless
    given) added to their model-settings.json."""
    models = home / name
    shutil.rmtree(models, ignore_errors=True)
    shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("*.py"))
    for path in models.glob("*/model-settings.json"):
        path.write_text(json.dumps({**json.loads(path.read_text()), "max_batch_size": 16,
                                    **settings}))
    return models


@contextlib.contextmanager
def postgres(skip: bool) -> Iterator[str | None]:
    """The URL of a private PostgreSQL cluster (tests/postgres.py), or None."""
    if skip:
        yield None
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from postgres import private_cluster

    try:
        with private_cluster() as cluster:
            yield cluster.url
    except BaseException as e:  # pytest's Skipped when PostgreSQL is missing
        if type(e).__name__ != "Skipped":
            raise
        print(f"# no PostgreSQL: {e}", flush=True)
        yield None


def depot_memory(home: Path, samples: Path) -> dict:
    """PSS of 1 and of 4 workers, after every worker has served requests."""
    found = {}
    for workers in (1, 4):
        server = depot_server(f"depot-mem-{workers}", home, workers)
        proc = start(server, home / f"depot-mem-{workers}.log")
        try:
            body = (samples / "mnist-svm-1.json").read_bytes()
            url = f"http://127.0.0.1:{PORT}/v2/models/mnist-svm/infer"
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: urllib.request.urlopen(
                    urllib.request.Request(url, data=body), timeout=10).read(), range(400)))
            found[workers] = pss_mb(proc.pid)
        finally:
            stop(proc)
    return found


def control_plane(home: Path, samples: Path, state_url: str | None = None) -> dict:
    """After unload (load) returns, 64 requests at once: how long after the
    call returned did the first burst start in which every reply was refused
    (served)? Worst of 5 tries each way, and the calls' median duration. On
    one host of 4 workers; with ``state_url``, the call goes to one host and
    the bursts to another (2 workers each, one PostgreSQL)."""
    if state_url:
        servers = [depot_server(f"depot-control-{port}", home, 2, state_url=state_url,
                                port=port) for port in (PORT, PORT + 10)]
    else:
        servers = [depot_server("depot-control", home, 4)]
    procs = [start(s, home / f"{s.label}.log") for s in servers]
    body = (samples / "mushroom-xgboost-1.json").read_bytes()
    caller, checked = (f"http://127.0.0.1:{s.port}" for s in (servers[0], servers[-1]))

    def status(url: str, data: bytes = b"") -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data=data),
                                        timeout=10) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code

    def control(op: str) -> float:
        began = time.monotonic()
        assert status(f"{caller}/v2/repository/models/mushroom-xgboost/{op}") == 200
        return time.monotonic() - began

    def burst() -> set[int]:
        url = f"{checked}/v2/models/mushroom-xgboost/infer"
        with ThreadPoolExecutor(16) as pool:
            return set(pool.map(lambda _: status(url, body), range(64)))

    results = {}
    try:
        for op, undo, want in (("unload", "load", 400), ("load", "unload", 200)):
            worst, took = 0.0, []
            for _ in range(5):
                control(undo)
                took.append(control(op))
                returned = time.monotonic()
                for _ in range(1000):
                    began = time.monotonic()
                    if burst() == {want}:
                        break
                else:
                    raise RuntimeError(f"{op}: the bursts never agreed")
                worst = max(worst, began - returned)
            results[op] = worst
            results[f"{op} call"] = statistics.median(took)
    finally:
        for proc in procs:
            stop(proc)
    return results


def run_python(script: str, *args: str) -> str:
    return subprocess.run(["taskset", "-c", SERVER_CPU, PYTHON, str(BENCH / script), *args],
                          capture_output=True, text=True, check=True, cwd=ROOT).stdout


def case_label(r: dict) -> str:
    return f"{r['model']} {r['rows']} row{'s' if r['rows'] > 1 else ''}"


def phase_table(samples: Path) -> str:
    """bench/phases.py's µs per phase of one request through the WSGI app,
    as a table: a phase per row, a case per column."""
    found: dict[str, dict[str, float]] = {}
    cases: list[str] = []
    for line in run_python("phases.py", str(samples), "1").splitlines():
        r = json.loads(line)
        case = case_label(r)
        if case not in cases:
            cases.append(case)
        found.setdefault(r["phase"], {})[case] = r["us"]
    lines = ["| phase (µs, median, in-process) | " + " | ".join(cases) + " |",
             "|---" * (len(cases) + 1) + "|"]
    lines += [f"| {phase} | " + " | ".join(f"{by.get(c, float('nan')):.1f}" for c in cases) + " |"
              for phase, by in found.items()]
    return "\n".join(lines)


def instruction_table(samples: Path) -> str:
    """bench/instructions.py's counts: Depot's and the model floor's
    instructions a request, in-process, and their ratio."""
    lines = ["| case (instructions a request, in-process) | Depot | model floor | "
             "model floor/Depot |", "|---|---|---|---|"]
    for line in run_python("instructions.py", str(samples)).splitlines():
        r = json.loads(line)
        lines.append(f"| {case_label(r)} | "
                     f"{r['depot']:,} | {r['model floor']:,} | {r['ratio']:.3f} |")
    return "\n".join(lines)


def baseline_tree(home: Path, rev: str) -> Path | None:
    """Depot's files as they were at ``rev``, in a folder of their own (the
    same virtualenv runs them); None if git cannot give them."""
    tree = home / "baseline"
    shutil.rmtree(tree, ignore_errors=True)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev],
                             capture_output=True)
    if archive.returncode != 0:
        print(f"# no baseline: git archive {rev}: {archive.stderr.decode().strip()}", flush=True)
        return None
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def baseline_table(servers: dict[str, Server]) -> str:
    """Depot now against Depot at --baseline, from the same paired turns:
    a change that costs rps or p99 shows here."""
    base = servers.get("depot-baseline")
    if base is None or not base.results:
        return ""
    lines = [f"| case | Depot rps | {base.label} rps | now/then | Depot p99 ms | then p99 ms |",
             "|---|---|---|---|---|---|"]
    for case in CASES:
        d = pooled(servers["depot"].results[case], servers["depot-2"].results[case])
        b = base.results[case]
        label = case_label({"model": case[0], "rows": case[1]})
        lines.append(f"| {label} c{case[2]} | {d['rps']:.0f} | {b['rps']:.0f} | "
                     f"{times(ratio(d, b))} | {d['p99']:.2f} | {b['p99']:.2f} |")
    return "\n".join(lines)


def cpu_table(servers: dict[str, Server]) -> str:
    """CPU time a request, from /proc, over each server's turns: the work a
    request costs the server, whatever the scheduler made of it (a rate
    also counts time the server sat waiting). Depot and the model floor
    are each the mean of their two processes."""
    def cpu(keys: tuple[str, ...], case: tuple) -> float | None:
        found = [servers[k].results[case].get("cpu_us") for k in keys if k in servers]
        found = [v for v in found if v is not None and v == v]
        return sum(found) / len(found) if found else None

    lines = ["| case (CPU µs a request, server) | Depot | model floor | Depot/model floor | "
             "MLServer fastest |", "|---|---|---|---|---|"]
    for case in CASES:
        d, mf = cpu(("depot", "depot-2"), case), cpu(("model-floor", "model-floor-2"), case)
        ml = cpu(("mlserver-fastest",), case)
        cells = [f"{v:.0f}" if v is not None else "-" for v in (d, mf)]
        cells.append(f"{d / mf:.3f}" if d and mf else "-")
        cells.append(f"{ml:.0f}" if ml is not None else "-")
        label = case_label({"model": case[0], "rows": case[1]})
        lines.append(f"| {label} c{case[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- report --------------------------------------------------------------------------------

def ratio(a: dict | None, b: dict | None) -> float | None:
    """a's rps over b's: the median of their turns' ratios, turn by turn
    (the two ran seconds apart, so they share the machine's speed then),
    or the ratio of their medians for results kept without turns."""
    if not a or not b or not b["rps"]:
        return None
    pairs = [x / y for x, y in zip(a.get("turns", ()), b.get("turns", ())) if y]
    return statistics.median(pairs) if pairs else a["rps"] / b["rps"]


def pooled(first: dict, second: dict) -> dict:
    """Two identical processes' results as one: their mean rps turn by turn.
    One process of a server can be faster or slower than an identical one
    for a whole case, turn after turn (two model floors: 0.95-0.98 of each
    other on one case, run after run, and 1.00 on the next; two Depots once
    0.75), for no cause found yet: one process per side would read that as
    Depot's cost."""
    turns = [(a + b) / 2 for a, b in zip(first["turns"], second["turns"])]
    return {"rps": statistics.median(turns), "turns": turns,
            "p50": statistics.median((first["p50"], second["p50"])),
            "p99": statistics.median((first["p99"], second["p99"])),
            "bad": first["bad"] + second["bad"]}


def times(value: float | None, suffix: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{suffix}"


def report(servers: dict[str, Server], inproc: dict, extras: dict) -> str:
    """The composite floor takes the issue's transport floors (sync and
    gthread); the keep-alive floors, on Depot's own worker, are stricter."""
    depot_sync, batched = servers["depot-sync"], servers["depot-batched"]
    on_pg = servers.get("depot-postgres")
    floors = [servers["floor"], servers["floor-sync"]]
    keepalive = servers["floor-keepalive"]
    ml, fast = servers.get("mlserver"), servers.get("mlserver-fastest")
    ml_batched = servers.get("mlserver-batched")
    lines = [
        "| model | rows | conc | Depot rps | p50 ms | p99 ms | Depot on PostgreSQL rps "
        "(PostgreSQL/SQLite) | Depot sync worker rps | Depot batched rps (p99) | "
        "MLServer rps (p99) | MLServer fastest rps (p99) | MLServer batched rps (p99) | "
        "floor rps (sync/gthread best) | composite floor | keep-alive floor rps | "
        "model floor rps | Depot/MLServer | Depot/MLServer fastest | Depot/composite | "
        "Depot/model floor | second/first process: Depot, model floor | batched/model floor | "
        "batched/MLServer batched |",
        "|" + "---|" * 23,
    ]
    for case in CASES:
        d = pooled(servers["depot"].results[case], servers["depot-2"].results[case])
        mf = pooled(servers["model-floor"].results[case], servers["model-floor-2"].results[case])
        f = max((s.results[case] for s in floors), key=lambda r: r["rps"])
        composite = 1 / (1 / f["rps"] + inproc[case[:2]] / 1000) if f["rps"] else 0
        row = [case[0], str(case[1]), str(case[2]), f"{d['rps']:.0f}", f"{d['p50']:.2f}",
               f"{d['p99']:.2f}"]
        pg = on_pg.results.get(case) if on_pg else None
        row.append(f"{pg['rps']:.0f} ({times(ratio(pg, d))})" if pg else "-")
        row.append(f"{depot_sync.results[case]['rps']:.0f}")
        b = batched.results[case]
        row.append(f"{b['rps']:.0f} ({b['p99']:.1f})")
        for peer in (ml, fast, ml_batched):
            p = peer.results.get(case) if peer else None
            row.append(f"{p['rps']:.0f} ({p['p99']:.1f})" if p else "-")
        row += [f"{f['rps']:.0f}", f"{composite:.0f}", f"{keepalive.results[case]['rps']:.0f}",
                f"{mf['rps']:.0f}"]
        for peer in (ml, fast):
            row.append(times(ratio(d, peer.results.get(case) if peer else None), "x"))
        row.append(f"{d['rps'] / composite:.2f}" if composite else "-")
        row.append(times(ratio(d, mf)))
        row.append(", ".join(times(ratio(servers[f"{k}-2"].results[case], servers[k].results[case]))
                             for k in ("depot", "model-floor")))
        row.append(times(ratio(b, mf)))
        row.append(times(ratio(b, ml_batched.results.get(case) if ml_batched else None), "x"))
        bad = sum(s.results[case]["bad"] for s in servers.values() if case in s.results)
        if bad:
            row[-1] += f" ({bad} bad replies)"
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| server | cold start s | PSS MB (peak under load) |", "|---|---|---|"]
    for s in servers.values():
        lines.append(f"| {s.label} | {s.cold_start:.2f} | {s.pss_mb:.0f} |")
    lines += ["", *(f"- {k}: {v}" for k, v in extras.items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0,
                        help="seconds of load per server and case, in --rounds turns")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--pair-rounds", type=int, default=12,
                        help="more turns for Depot and the model floor (see PAIRED)")
    parser.add_argument("--warmup", type=float, default=1.0)  # whole seconds, as wrk takes
    parser.add_argument("--home", type=Path, default=Path("/tmp/depot-bench"))
    parser.add_argument("--skip-mlserver", action="store_true")
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--reuse", action="store_true",
                        help="take the servers' results from the last run's results.json")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run Depot as it was at this git revision, and compare")
    args = parser.parse_args()
    with postgres(args.skip_postgres or args.reuse) as state_url:
        run(args, state_url)


def run(args: argparse.Namespace, state_url: str | None) -> None:
    args.home.mkdir(parents=True, exist_ok=True)
    samples = args.home / "samples"
    ensure_tool("wrk")
    ensure_tool("valgrind")
    make_samples(samples)
    mlserver = None if args.skip_mlserver else ensure_mlserver(args.home)

    def floor(port: int, app: str = "floor_app:app") -> list[str]:
        return ["-w", "1", "--bind", f"127.0.0.1:{port}", "--no-control-socket", app]

    keepalive = ["-k", "app.server.worker.KeepAliveWorker", "--pythonpath", str(ROOT)]
    servers = {
        "depot": depot_server("depot (1 worker)", args.home, 1, port=PORT),
        # a second of each, identical: see pooled()
        "depot-2": depot_server("depot, a second process (1 worker)", args.home, 1,
                                port=PORT + 11, state="state-2"),
        "depot-sync": depot_server("depot, gunicorn sync worker (1 worker)", args.home, 1,
                                   "-k", "sync", port=PORT + 1),
        "depot-batched": depot_server("depot, max_batch_size 16 (1 worker)", args.home, 1,
                                      models=batched_models(args.home), port=PORT + 2),
        **({"depot-postgres": depot_server("depot on PostgreSQL (1 worker)", args.home, 1,
                                           state_url=state_url, port=PORT + 3)}
           if state_url else {}),
        "floor": Server("floor gthread (1 worker)",
                        GUNICORN + ["-k", "gthread", "--threads", "4", *floor(PORT + 4)],
                        cwd=BENCH, port=PORT + 4),
        "floor-sync": Server("floor sync (1 worker)", GUNICORN + ["-k", "sync", *floor(PORT + 5)],
                             cwd=BENCH, port=PORT + 5),
        "floor-keepalive": Server("floor, Depot's keep-alive worker (1 worker)",
                                  GUNICORN + [*keepalive, *floor(PORT + 6)], cwd=BENCH,
                                  port=PORT + 6),
        "model-floor": Server("model floor, Depot's keep-alive worker (1 worker)",
                              GUNICORN + [*keepalive, *floor(PORT + 7, "model_floor_app:app")],
                              cwd=BENCH, port=PORT + 7),
        "model-floor-2": Server("model floor, a second process (1 worker)",
                                GUNICORN + [*keepalive, *floor(PORT + 12, "model_floor_app:app")],
                                cwd=BENCH, port=PORT + 12),
    }
    if args.baseline:
        tree = baseline_tree(args.home, args.baseline)
        if tree is not None:
            servers["depot-baseline"] = depot_server(
                f"depot at {args.baseline} (1 worker)", args.home, 1, port=PORT + 13,
                state="state-baseline")
            servers["depot-baseline"].cwd = tree
    if mlserver:
        models = args.home / "mlserver-models"
        shutil.rmtree(models, ignore_errors=True)
        shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("*.py"))
        def ports(http: int) -> dict[str, str]:
            return {"MLSERVER_HTTP_PORT": str(http), "MLSERVER_GRPC_PORT": str(http + 100),
                    "MLSERVER_METRICS_PORT": str(http + 200)}

        # each runs from a scratch folder of its own: MLServer writes .envs/
        # and .metrics/ where it starts
        # its adaptive batching waits up to max_batch_time for more requests
        batched = batched_models(args.home, "mlserver-batched-models", max_batch_time=0.002)
        for key, label, port, folder, extra in (
                ("mlserver", "MLServer 1.7.1 default", PORT + 8, models, {}),
                ("mlserver-fastest", "MLServer 1.7.1 parallel_workers=0", PORT + 9, models,
                 {"MLSERVER_PARALLEL_WORKERS": "0"}),
                ("mlserver-batched", "MLServer 1.7.1 parallel_workers=0, max_batch_size 16, "
                 "max_batch_time 2 ms", PORT + 10, batched, {"MLSERVER_PARALLEL_WORKERS": "0"})):
            scratch = args.home / key
            scratch.mkdir(exist_ok=True)
            servers[key] = Server(label, [str(mlserver), "start", str(folder)],
                                  env={**ports(port), **extra}, cwd=scratch, port=port)
    saved = args.home / "results.json"
    if args.reuse:
        for key, found in json.loads(saved.read_text()).items():
            if key not in servers:
                continue
            servers[key].cold_start, servers[key].pss_mb = found["cold_start"], found["pss_mb"]
            servers[key].results = {tuple(json.loads(c)): r for c, r in found["results"].items()}
    else:
        for server in servers.values():
            alone(server, samples, args.home)
        interleaved([servers[k] for k in TURNS if k in servers], samples, args.home, args,
                    frozenset(servers[k].label for k in PAIRED))
        saved.write_text(json.dumps({key: {
            "cold_start": s.cold_start, "pss_mb": s.pss_mb,
            "results": {json.dumps(c): r for c, r in s.results.items()}}
            for key, s in servers.items()}))

    print("# in-process floor", flush=True)
    inproc = {(j["model"], j["rows"]): j["e2e_ms"] for j in
              map(json.loads, run_python("inprocess.py", str(samples), "3").splitlines())}
    print("# where a request's time goes (bench/phases.py)", flush=True)
    phases = phase_table(samples)
    print(phases, flush=True)
    print("# instructions a request costs (bench/instructions.py, under valgrind)", flush=True)
    instructions = instruction_table(samples)
    print(instructions, flush=True)
    print("# memory and control plane", flush=True)
    memory = depot_memory(args.home, samples)
    control = control_plane(args.home, samples)
    across = control_plane(args.home, samples, state_url) if state_url else None
    state = run_python("state_check.py").strip().splitlines()[-1]
    if state_url:
        state_pg = run_python("state_check.py", "20000", state_url).strip().splitlines()[-1]
        state = f"SQLite: {state.split(':', 1)[1].strip()}; PostgreSQL: {state_pg.split(':', 1)[1].strip()}"
    extras = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "Depot PSS, 1 worker / 4 workers (after serving)":
            f"{memory[1]:.0f} MB / {memory[4]:.0f} MB (4 workers = {memory[4] / memory[1]:.2f}x one)",
        "unload -> a burst of 64 requests over 4 workers all refused, starting (worst of 5)":
            f"{control['unload'] * 1000:.1f} ms after the call returned",
        "load -> a burst all served, starting (worst of 5)":
            f"{control['load'] * 1000:.1f} ms after the call returned",
        "unload / load call, median of 5": (
            f"{control['unload call'] * 1000:.1f} / {control['load call'] * 1000:.1f} ms on one "
            "host (SQLite)" + (f"; {across['unload call'] * 1000:.1f} / "
                                 f"{across['load call'] * 1000:.1f} ms across two hosts "
                                 "(PostgreSQL)" if across else "")),
        "two hosts on PostgreSQL: call on one, bursts on the other, all agreeing (worst of 5)": (
            f"unload {across['unload'] * 1000:.1f} ms, load {across['load'] * 1000:.1f} ms "
            "after the call returned" if across else "-"),
        "shared-state check": state,
        "in-process e2e ms": ", ".join(f"{m} {r} rows {v:.3f}" for (m, r), v in inproc.items()),
        "cold start Depot / MLServer default": (
            f"{servers['depot'].cold_start / servers['mlserver'].cold_start:.2f}"
            if "mlserver" in servers else "-"),
    }
    table = "\n\n".join((report(servers, inproc, extras), baseline_table(servers),
                           cpu_table(servers), phases, instructions))
    (args.home / "RESULTS.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
