"""Hostile clients against a real Depot, measured: what each attack costs a
normal client, and what the attacker gets back.

usage: python bench/attacks.py [--workers 2 4] [--slow 2 16] [--seconds 30]

Each attack runs against its own gunicorn (gunicorn.conf.py, Depot's worker,
default DEPOT_* settings) on a free localhost port, with a copy of models/ and
its own state folder, as tests/conftest.py's run_server does. Attacks 1 and 2
run once per pair of ``--workers`` and ``--slow`` counts; the others use the
first worker count unless the attack fixes one. The normal client opens a
fresh connection per probe. Prints one markdown table row per attack.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import slow_artifact, stop, wait_until  # noqa: E402  (the tests' own helpers)
INFER = b"POST /v2/models/mnist-svm/infer HTTP/1.1\r\nHost: depot\r\nContent-Type: application/json\r\n"
HEAD = INFER + b"Content-Length: 1000\r\n\r\n"
LIVE = b"GET /v2/health/live HTTP/1.1\r\nHost: depot\r\n\r\n"
BAD_CHUNKS = {"zz": b"zz\r\nab\r\n", "-1": b"-1\r\nab\r\n", "0x2": b"0x2\r\nab\r\n",
              '" 2"': b" 2\r\nab\r\n", "3 bytes in a 2": b"2\r\nabc\r\n"}
ROWS: list[str] = []


@dataclass
class Server:
    port: int
    proc: subprocess.Popen
    models: Path
    log: Path
    started: float = field(default_factory=time.monotonic)
    first_answer: float = 0.0  # when it first answered at all (503 while loading)
    stuck: int = 0  # index requests that timed out

    def __post_init__(self) -> None:
        self.url = f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def worker_pids(self) -> set[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}

    def state(self, model: str) -> str | None:
        """The model's state in the index; None if absent or the index timed out."""
        try:
            index = requests.post(self.url + "/v2/repository/index", json={}, timeout=10).json()
        except requests.Timeout:
            self.stuck += 1
            return None
        return next((e["state"] for e in index if e["name"] == model), None)

    def count(self, *needles: str) -> str:
        text = self.log.read_text(errors="replace")
        return ", ".join(f"{text.count(n)}× '{n}'" for n in needles)


def _ready(server: Server) -> bool:
    if server.proc.poll() is not None:
        raise RuntimeError(f"server exited with {server.proc.returncode}: see {server.log}")
    with contextlib.suppress(requests.RequestException):
        status = requests.get(server.url + "/v2/health/ready", timeout=2).status_code
        server.first_answer = server.first_answer or time.monotonic()
        return status == 200
    return False


@contextlib.contextmanager
def depot(home: Path, workers: int, keepalive: int | None = None, nofile: int | None = None,
          port: int | None = None) -> Iterator[Server]:
    """gunicorn on ``home``'s models and state, stopped by its process group;
    a second call with the same ``home`` keeps both."""
    models = home / "models"
    if not models.exists():
        shutil.copytree(ROOT / "models", models, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DEPOT_", "GUNICORN_"))}
    env.update(DEPOT_MODELS=str(models), DEPOT_STATE_DIR=str(home / "state"))
    if keepalive is not None:
        env["GUNICORN_CMD_ARGS"] = f"--keep-alive {keepalive}"
    limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))) if nofile else None
    log = home / f"server-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}", "--workers", str(workers)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=limit)
    server = Server(port, proc, models, log)
    try:
        wait_until(lambda: _ready(server), timeout=90)
        wait_until(lambda: len(server.worker_pids()) == workers, timeout=20)
        yield server
    finally:
        stop(proc)


# -- clients ----------------------------------------------------------------------

def probes(server: Server, seconds: int, stop: Callable[[], bool] = lambda: False) -> list[float | None]:
    """One fresh-connection GET /v2/health/ready a second for ``seconds``
    (or until ``stop()``): seconds to each 200, None for anything else."""
    start, took = time.monotonic(), []
    for i in range(seconds):
        if stop():
            break
        time.sleep(max(0.0, start + i - time.monotonic()))
        sent = time.monotonic()
        try:
            reply = requests.get(server.url + "/v2/health/ready", timeout=5,
                                 headers={"Connection": "close"})
            took.append(time.monotonic() - sent if reply.status_code == 200 else None)
        except requests.RequestException:
            took.append(None)
    return took


def summary(took: list[float | None]) -> str:
    ok = [t for t in took if t is not None]
    if not ok:
        return f"0/{len(took)} answered"
    return (f"{len(ok)}/{len(took)} answered, p50 {statistics.median(ok) * 1000:.1f} ms, "
            f"max {max(ok) * 1000:.1f} ms (at {took.index(max(ok))} s)")


def readable(sock: socket.socket, timeout: float) -> bool:
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout * 1000))


def trickle(server: Server, prefix: bytes, data: bytes, stop_at: float, every: float = 2.0,
            patience: float = 15.0) -> tuple[str, float]:
    """Send ``prefix``, then ``data`` a byte every ``every`` s until the server
    answers, then wait up to ``patience`` s: what came, and after how long."""
    with server.connect() as sock:
        started = time.monotonic()
        try:
            sock.sendall(prefix)
            for i in range(len(data)):
                sock.sendall(data[i:i + 1])
                if readable(sock, every):
                    break
                if time.monotonic() > stop_at:
                    return "still open", time.monotonic() - started
            if not readable(sock, patience):
                return "no answer", time.monotonic() - started
            took = time.monotonic() - started
            with sock.makefile("rb") as f:
                answer = read_response(f)
            if not answer:
                return "closed", took
            return f"{answer[0]}{' + close' * (answer[1].get('connection') == 'close')}", took
        except OSError as e:
            return type(e).__name__, time.monotonic() - started


def slow_clients(server: Server, sockets: int, prefix: bytes, data: bytes, seconds: int) -> str:
    """``sockets`` slow senders, each reconnecting when dropped, for
    ``seconds``, while the normal client probes; both summarised."""
    until = time.monotonic() + seconds
    got: dict[str, list[float]] = defaultdict(list)

    def attacker(_: int) -> None:
        while time.monotonic() < until:
            outcome, took = trickle(server, prefix, data, stop_at=until + 20)
            got[outcome].append(took)

    with ThreadPoolExecutor(sockets) as pool:
        futures = [pool.submit(attacker, i) for i in range(sockets)]
        normal = summary(probes(server, seconds))
        for f in futures:
            f.result(timeout=60)
    return normal + " | " + "; ".join(f"{len(ts)}× {o} after {min(ts):.1f}–{max(ts):.1f} s"
                                      for o, ts in sorted(got.items()))


def read_response(f) -> tuple[int, dict[str, str], bytes] | None:
    """One response from a socket's file; None when the server closed instead."""
    if not (line := f.readline()):
        return None
    headers = {}
    while (h := f.readline()) not in (b"\r\n", b""):
        name, value = h.decode().split(":", 1)
        headers[name.strip().lower()] = value.strip()
    return int(line.split()[1]), headers, f.read(int(headers.get("content-length", 0)))


def row(number: str, attack: str, server: str, result: str) -> None:
    ROWS.append(f"| {number} | {attack} | {server} | {result} |")
    print(ROWS[-1], flush=True)


def timed_load(server: Server, model: str) -> tuple[int | str, float]:
    started = time.monotonic()
    try:
        status = requests.post(f"{server.url}/v2/repository/models/{model}/load",
                               timeout=60).status_code
    except requests.RequestException as e:
        status = type(e).__name__
    return status, time.monotonic() - started


def add_slow_model(server: Server, seconds: float) -> None:
    (server.models / "slow.joblib").write_bytes(slow_artifact(seconds))
    wait_until(lambda: server.state("slow"), timeout=30)


# -- attacks ----------------------------------------------------------------------

def slow_head_and_body(home: Path, workers: int, sockets: int, seconds: int) -> None:
    with depot(home, workers) as server:
        row("1", f"slowloris: {sockets} heads, 1 byte / 2 s", f"{workers} workers",
            slow_clients(server, sockets, b"", HEAD, seconds))
        row("2", f"slow body: {sockets} × CL 1000, 1 byte / 2 s", f"{workers} workers",
            slow_clients(server, sockets, HEAD, b"1" * 1000, seconds))


def stalled(home: Path, workers: int) -> None:
    with depot(home, workers) as server, ThreadPoolExecutor(1) as pool:
        status, took = trickle(server, INFER + b"Content-Length: 1000000000\r\n\r\n", b"", 0)
        row("3", "CL 1000000000, then silence", f"{workers} workers",
            f"— | {status} after {took * 1000:.1f} ms")
        half = pool.submit(trickle, server, HEAD + b" " * 500, b"", 0, patience=30)
        normal = summary(probes(server, 30, stop=half.done))
        status, took = half.result(timeout=35)
        row("3", "CL 1000, 500 bytes, then silence", f"{workers} workers",
            f"{normal} (while it waits) | {status} after {took:.1f} s")


def kept_behind_long_request(home: Path) -> None:
    with depot(home, 1, keepalive=1) as server, ThreadPoolExecutor(1) as pool:
        add_slow_model(server, 6)
        with server.connect() as kept, kept.makefile("rb") as f:
            kept.sendall(LIVE)
            first = read_response(f)
            load = pool.submit(timed_load, server, "slow")
            time.sleep(0.5)  # the only worker is in the 6 s load now
            started = time.monotonic()
            try:
                kept.sendall(LIVE)
                answer = read_response(f)
                second = f"{answer[0]} after {time.monotonic() - started:.1f} s" if answer else "closed"
            except OSError as e:
                second = type(e).__name__
        status, took = load.result(timeout=60)
        row("4", "kept-alive request behind a 6 s load", "1 worker, --keep-alive 1",
            f"before: {first and first[0]}; the load: {status} after {took:.1f} s | "
            f"kept request: {second}; index timeouts: {server.stuck}")


def closings(socks: list[socket.socket], seconds: float) -> list[float]:
    """Seconds after which the server ended each of ``socks`` that it ended
    within ``seconds``."""
    start, poller, ended = time.monotonic(), select.poll(), []
    for s in socks:
        poller.register(s, select.POLLIN)
    while (left := start + seconds - time.monotonic()) > 0 and len(ended) < len(socks):
        for fd, _ in poller.poll(min(left, 0.1) * 1000):
            poller.unregister(fd)
            ended.append(time.monotonic() - start)
    return ended


def descriptors(home: Path, seconds: int = 30) -> None:
    with depot(home, 4, nofile=256) as server, contextlib.ExitStack() as held, \
            ThreadPoolExecutor(1) as pool:
        before = server.worker_pids()
        idle = [held.enter_context(server.connect()) for _ in range(600)]
        during = pool.submit(probes, server, seconds)
        ended = closings(idle, seconds)
        during = summary(during.result(timeout=seconds + 10))
        held.close()
        after = summary(probes(server, 1))
        ends = f" after {min(ended):.1f}–{max(ended):.1f} s" if ended else ""
        row("5", "600 idle connections held 30 s", "4 workers, RLIMIT_NOFILE 256",
            f"during: {during}; after closing them: {after} | {len(ended)}/600 ended by the "
            f"server{ends}; {len(before - server.worker_pids())} worker pids changed; "
            f"log: {server.count('Worker exiting', 'Traceback', 'Cannot accept')}")


def bad_chunks(home: Path, workers: int) -> None:
    with depot(home, workers) as server:
        answers = []
        for name, chunk in BAD_CHUNKS.items():
            with server.connect() as sock, sock.makefile("rb") as f:
                sock.sendall(INFER + b"Transfer-Encoding: chunked\r\n\r\n" + chunk + b"0\r\n\r\n")
                got = read_response(f)
                answers.append(f"{name}: {got[0]} {got[1].get('content-type')}" if got else
                               f"{name}: closed")
        row("6", "chunked bodies with bad sizes", f"{workers} workers",
            f"— | {'; '.join(answers)}; log: {server.count('Traceback')}")


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def master_killed(home: Path, workers: int) -> None:
    with depot(home, workers) as server, ThreadPoolExecutor(1) as pool:
        add_slow_model(server, 30)
        pids = server.worker_pids()
        pool.submit(timed_load, server, "slow")
        wait_until(lambda: server.state("slow") == "LOADING", timeout=40)
        killed = time.monotonic()
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
        wait_until(lambda: not any(_alive(p) for p in pids), timeout=40, every=0.1)
        gone = time.monotonic() - killed
    try:
        with depot(home, workers, port=server.port) as again:
            states = {m: again.state(m) for m in ("mnist-svm", "mushroom-xgboost", "slow")}
            restart = (f"same port and state: first answer (503) after "
                       f"{again.first_answer - again.started:.1f} s, ready after "
                       f"{time.monotonic() - again.started:.1f} s, {states}")
    except (RuntimeError, AssertionError) as e:
        restart = f"restart failed: {e}"
    row("7", "SIGKILL of the master mid 30 s load", f"{workers} workers",
        f"— | {server.stuck} index polls timed out (10 s); all {len(pids)} workers "
        f"gone {gone:.1f} s after the kill; {restart}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--slow", type=int, nargs="+", default=[2, 16],
                        help="slow sockets for each --workers count (attacks 1 and 2)")
    parser.add_argument("--seconds", type=int, default=30, help="probing time of attacks 1 and 2")
    args = parser.parse_args()
    if len(args.slow) != len(args.workers):
        parser.error("--slow needs one count per --workers")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 600 sockets of our own
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4096)), hard))
    header = "| # | attack | server | normal client | attacker got |\n|---|---|---|---|---|"
    print(header)
    with tempfile.TemporaryDirectory(prefix="depot-attacks-") as tmp:
        homes = iter(Path(tmp) / str(i) for i in range(100))
        for workers, sockets in zip(args.workers, args.slow):
            slow_head_and_body(next(homes), workers, sockets, args.seconds)
        stalled(next(homes), args.workers[0])
        kept_behind_long_request(next(homes))
        descriptors(next(homes))
        bad_chunks(next(homes), args.workers[0])
        master_killed(next(homes), args.workers[0])
    print(f"\n{header}\n" + "\n".join(ROWS))
    print(f"\n{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, workers {args.workers}, "
          f"slow sockets {args.slow}, {args.seconds} s of probes")


if __name__ == "__main__":
    main()
