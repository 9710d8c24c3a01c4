"""A private PostgreSQL cluster for the tests: no mock, and no server of the
machine's own.

``initdb`` makes a cluster in a temporary folder and ``pg_ctl`` runs it on a
free loopback port, with its unix socket in that folder too, so nothing else
on the machine can reach it or be reached by it. PostgreSQL refuses to run
as root, so when the tests do, the cluster runs as the ``postgres`` user
(which Debian's ``postgresql`` package creates; ``.ci/run`` installs it).
Every wait polls to a deadline, and the server is stopped by the PID in its
``postmaster.pid``, never by name.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

#: the tests' own role, which owns its databases and is no superuser, as a
#: deployment's would be
ROLE = "depot"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


def bin_dir() -> Path | None:
    """Where initdb and pg_ctl are: Debian keeps them out of PATH, in
    /usr/lib/postgresql/<version>/bin (the newest version wins)."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(versions[-1]).parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not: it is gone, only unreaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class Cluster:
    """One private cluster: :meth:`start`, :meth:`stop`, :meth:`down` (stopped
    for the duration of a ``with``, for outage tests) and fresh databases."""

    def __init__(self, folder: Path, binaries: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "server.log"
        self.bin = binaries
        self.port = _free_port()
        #: the OS user the server runs as (PostgreSQL refuses root)
        self.os_user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
        self.superuser = self.os_user
        self.pid: int | None = None
        #: the ``depot`` database, made once the cluster runs
        self.url = ""
        self._databases = 0

    # -- URLs -----------------------------------------------------------------

    def url_of(self, database: str, user: str = ROLE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    @property
    def admin_url(self) -> str:
        return self.url_of("postgres", self.superuser)

    def new_database(self) -> str:
        """A database of its own for one test, owned by :data:`ROLE`."""
        self._databases += 1
        name = f"t{self._databases}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" OWNER "{ROLE}"')
        return self.url_of(name)

    # -- processes ------------------------------------------------------------

    def _run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """One of PostgreSQL's programs, as the cluster's OS user."""
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.os_user, "--", *command]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        done = subprocess.run(command, cwd=self.folder, env=env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stdout}"
                               f"{done.stderr}\n{self.log_tail()}")
        return done

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, self.os_user, self.os_user)
        self._run("initdb", "-D", str(self.data), "-U", self.superuser, "--auth=trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\n"
                       "listen_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.folder}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                       "max_connections = 200\n")

    def start(self) -> None:
        """Start the server and wait until it takes connections."""
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-W", "start")
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with psycopg.connect(self.admin_url, connect_timeout=2):
                    break
            except psycopg.OperationalError as e:
                if time.monotonic() > deadline:
                    raise AssertionError(f"PostgreSQL did not start within {START_TIMEOUT}s: "
                                         f"{e}\n{self.log_tail()}") from None
                time.sleep(0.05)
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])

    def stop(self) -> None:
        """Stop the server by its postmaster's PID: a fast shutdown (every
        session ends at once), then SIGQUIT and SIGKILL if it outlives
        its deadline."""
        pid, self.pid = self.pid, None
        if pid is None:
            return
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-W", "stop", timeout=10)
        for sig, wait in ((None, STOP_TIMEOUT), (signal.SIGQUIT, 10.0), (signal.SIGKILL, 10.0)):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _alive(pid):
                return
        raise AssertionError(f"PostgreSQL (pid {pid}) outlived SIGKILL")

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """The server stopped for the body of the ``with``, and started again
        after it whatever happened, so the next test finds it running."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """A running cluster with :data:`ROLE`; stopped and deleted afterwards.
    Skips the tests that need it when PostgreSQL is not installed."""
    binaries = bin_dir()
    if binaries is None:
        pytest.skip("PostgreSQL's server binaries (initdb, pg_ctl) are missing: "
                    "apt-get install postgresql (.ci/run does)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run "
                        "PostgreSQL as: apt-get install postgresql creates it")
    # not under pytest's tmp_path: its root-only folders keep the postgres user out
    folder = Path(tempfile.mkdtemp(prefix="depot-pg-"))
    cluster = Cluster(folder, binaries)
    try:
        cluster.init()
        cluster.start()
        with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE ROLE "{ROLE}" LOGIN')
            conn.execute(f'CREATE DATABASE "{ROLE}" OWNER "{ROLE}"')
        cluster.url = cluster.url_of(ROLE)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Cluster]:
    """The session's private cluster; ``postgres.url`` is its ``depot`` database,
    ``postgres.new_database()`` gives a test a database of its own."""
    with private_cluster() as cluster:
        yield cluster


@pytest.fixture
def postgres_url(postgres: Cluster) -> str:
    """A fresh, empty database on the session's cluster, for one test."""
    return postgres.new_database()
