"""The PostgreSQL store, in-process, against a real private cluster: what it
keeps, how fast a write on one host reaches another's change mark, the
per-model lock across hosts, and a database that goes away and comes back.
Two PostgresStore objects with separate state folders stand for two hosts."""
from __future__ import annotations

import errno
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import timeit
from pathlib import Path
from statistics import median

import psycopg
import pytest
from psycopg import errors as pg

from app.errors import ModelBusy, StateUnavailable
from app.store import READY, UNAVAILABLE, Row
from app.store.postgres import PostgresStore
from app.store.sqlite import SQLiteStore
from conftest import ROOT, wait_until

ROW = Row(name="mnist-svm", version="", state=READY, reason="", generation=3,
          runtime="sklearn", snapshot="/state/snapshots/x/model.joblib", source="disk",
          details='{"parameters": {"a": 1}}', fingerprint="abc123")


@pytest.fixture
def host(postgres_url: str, tmp_path: Path):
    """A factory of stores on one fresh database, one state folder each;
    every store is closed after the test."""
    made: list[PostgresStore] = []

    def make(name: str = "a", url: str = postgres_url, **kw) -> PostgresStore:
        store = PostgresStore(url, tmp_path / name, host_id=name, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def backend_pid(store: PostgresStore) -> int:
    """The server process behind this process's session of ``store``."""
    with store.database.session() as conn:
        return conn.info.backend_pid


def refusal(call) -> str:
    """The message of the StateUnavailable that ``call`` raises."""
    with pytest.raises(StateUnavailable) as e:
        call()
    return e.value.message


# -- what it keeps ----------------------------------------------------------------

def test_a_row_and_meta_round_trip(host):
    store = host()
    store.reset()
    other = ROW.replace(name="ünï/cödé", version="2", state=UNAVAILABLE, reason="unloaded",
                        generation=2**40, runtime=None, snapshot=None)
    store.put(ROW)
    store.put(other)
    assert store.get(ROW.name, "") == ROW
    assert store.get(other.name, "2") == other
    assert store.get(ROW.name, "2") is None
    assert store.rows() == sorted([ROW, other], key=lambda r: (r.name, r.version))

    store.put(ROW.replace(state=UNAVAILABLE, generation=4))  # a put replaces
    assert store.get(ROW.name, "") == ROW.replace(state=UNAVAILABLE, generation=4)
    store.delete(other.name, "2")
    assert store.rows() == [ROW.replace(state=UNAVAILABLE, generation=4)]

    assert store.get_meta("started") is None
    store.set_meta("started", "1")
    store.set_meta("started", "0")
    assert store.get_meta("started") == "0"


def test_every_write_moves_the_writers_own_mark_before_it_returns(host, postgres_url):
    store = host()
    store.reset()
    seen = {store.change_mark()}
    for write in (lambda: store.put(ROW), lambda: store.set_meta("k", "v"),
                  lambda: store.delete(ROW.name, ""), store.reset):
        write()
        with psycopg.connect(postgres_url) as conn:
            (counter,) = conn.execute("SELECT n FROM changes").fetchone()
        assert store.change_mark() == counter  # no wait: the write's own RETURNING
        assert counter not in seen
        seen.add(counter)


def test_reset_forgets_everything_and_is_fresh_says_when_there_is_nothing_to_adopt(
        host, postgres_url):
    with psycopg.connect(postgres_url) as conn:  # an older Depot's meta table
        conn.execute("CREATE TABLE meta (k TEXT, v TEXT)")
    a, b = host("a"), host("b")
    assert a.is_fresh() and b.is_fresh()
    a.reset()
    assert not a.is_fresh() and not b.is_fresh()  # b joins: nothing says reset
    a.put(ROW)
    a.set_meta("started", "1")
    before = b.change_mark()
    b.reset()
    assert a.rows() == [] and a.get_meta("started") is None
    assert not a.is_fresh()
    assert b.change_mark() != before
    a.set_meta("schema", "from-another-version")
    assert a.is_fresh() and b.is_fresh()


# -- many hosts ---------------------------------------------------------------------

def test_a_put_on_one_host_reaches_the_others_change_mark_within_milliseconds(host):
    a, b = host("a"), host("b")
    a.reset()
    b.change_mark()  # b's listener is up
    took, after_return = [], []
    for i in range(30):
        start = time.perf_counter()
        a.put(ROW.replace(generation=i))
        returned = time.perf_counter()
        target = a.change_mark()
        wait_until(lambda: b.change_mark() == target, timeout=5, every=0.0002)
        heard = time.perf_counter()
        took.append((heard - start) * 1e3)
        after_return.append((heard - returned) * 1e3)
        assert b.get(ROW.name, "").generation == i  # and b's read shows the row
    print(f"\nput on a -> b's change_mark: median {median(took):.2f} ms "
          f"(max {max(took):.2f}); after put returned: median {median(after_return):.2f} ms")
    assert median(took) < 100


def test_change_mark_is_a_local_read(host, tmp_path):
    store = host()
    store.reset()
    store.change_mark()
    calls = 200_000
    pg_us = timeit.timeit(store.change_mark, number=calls) / calls * 1e6
    sqlite = SQLiteStore(tmp_path / "sqlite")
    sqlite.change_mark()
    sqlite_us = timeit.timeit(sqlite.change_mark, number=calls) / calls * 1e6
    print(f"\nchange_mark: PostgreSQL {pg_us:.3f} us, SQLite {sqlite_us:.3f} us per call")
    assert pg_us < 5  # a round trip is ~100 us even on loopback


# -- acknowledgements and the lease -------------------------------------------------

def test_a_write_returns_applied_once_every_live_host_has_heard_it(host):
    a, b = host("a", lease_seconds=3), host("b", lease_seconds=3)
    a.reset()
    assert b.vouches() and a.vouches()
    for generation in range(5):
        a.put(ROW.replace(generation=generation))
        started = time.monotonic()
        a.wait_applied()
        assert time.monotonic() - started < 1
        assert b.change_mark() == a.change_mark()  # b's next request reads the new row


def test_a_host_that_acknowledged_a_write_holds_its_rows_through_an_outage(host, postgres):
    """b acknowledges a's write only once it holds the rows as of it, so the
    database may go away right after a's call returns and b still serves
    what it acknowledged, with no read."""
    a, b = host("a"), host("b")
    a.reset()
    assert b.vouches()
    a.put(ROW)
    a.wait_applied()
    mark = b.change_mark()
    assert mark == a.change_mark()
    with postgres.down():
        assert b.rows_as_of(mark) == [ROW]
        assert a.rows_as_of(a.change_mark()) == [ROW]  # the writer holds its own write's
        with pytest.raises(StateUnavailable):
            b.rows()  # a read that needs the database says it is gone


def test_one_watcher_for_the_deployment_and_a_takeover_when_its_session_ends(host, postgres):
    a, b = host("a"), host("b")
    a.reset()
    holds = a.become_watcher()
    assert holds()
    took: list = []
    threading.Thread(target=lambda: took.append(b.become_watcher()), daemon=True).start()
    time.sleep(2.5)  # two of b's tries
    assert not took
    with psycopg.connect(postgres.admin_url, autocommit=True) as admin:  # a's host dies
        admin.execute("SELECT pg_terminate_backend(%s)", (holds.__self__.conn.info.backend_pid,))
    wait_until(lambda: took, timeout=10)
    assert took[0]()
    wait_until(lambda: not holds(), timeout=5)  # a learns it is no longer the watcher


def test_a_host_that_stops_hearing_stops_serving_before_the_others_stop_waiting(host):
    """b's listener stops (as when b cannot reach the database): a's write
    waits for b at most a lease, and by then b no longer vouches for what it
    knows; once b listens again, it serves again."""
    a, b = host("a", lease_seconds=3), host("b", lease_seconds=3)
    a.reset()
    assert b.vouches()
    listener = b.database.proc
    listener.stopping.set()
    listener.listener.join(timeout=5)
    a.put(ROW)
    started = time.monotonic()
    a.wait_applied()
    waited = time.monotonic() - started
    assert 1.0 < waited < 4.5, waited
    assert not b.vouches()
    assert b.change_mark() < a.change_mark()  # behind, and not serving: no stale answer
    listener.stopping.clear()
    listener.listening.clear()
    listener.listener = None  # the next call starts it again
    wait_until(b.vouches, timeout=5)
    assert b.change_mark() == a.change_mark()


def test_a_database_outage_ends_the_lease_and_its_return_renews_it(host, postgres):
    store = host("a", lease_seconds=2)
    store.reset()
    assert store.vouches()
    with postgres.down():
        wait_until(lambda: not store.vouches(), timeout=5)
    wait_until(store.vouches, timeout=15)


def test_a_lock_on_one_host_makes_the_other_wait_then_answer_busy(host):
    a, b = host("a"), host("b", lock_timeout=0.5)
    with a.lock("m"):
        start = time.monotonic()
        with pytest.raises(ModelBusy) as e:
            with b.lock("m"):
                pass
        waited = time.monotonic() - start
        assert 0.5 <= waited < 2.0
        assert e.value.message == ("model 'm' is busy: another load or unload has held it "
                                   "for 0.5 s; try again")
        with b.lock("another model"):  # a lock is per model
            pass
    start = time.monotonic()
    with b.lock("m"):  # released: at once
        assert time.monotonic() - start < 0.3


def test_a_process_that_dies_holding_a_lock_frees_it(host, postgres_url, tmp_path):
    holder = ("import sys, time\n"
              "from app.store.postgres import PostgresStore\n"
              "store = PostgresStore(sys.argv[1], sys.argv[2])\n"
              "held = store.lock('m')\n"
              "held.__enter__()\n"
              "print('locked', flush=True)\n"
              "time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", holder, postgres_url, str(tmp_path / "dies")],
                            cwd=ROOT, stdout=subprocess.PIPE, start_new_session=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline() == b"locked\n", "the holder never took the lock"
        b = host("b", lock_timeout=0.2)
        with pytest.raises(ModelBusy):
            with b.lock("m"):
                pass
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

        def free() -> bool:
            try:
                with b.lock("m"):
                    return True
            except ModelBusy:
                return False
        wait_until(free, timeout=10)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        proc.stdout.close()


def test_a_forked_child_uses_a_session_of_its_own(host):
    store = host()
    store.reset()
    store.put(ROW)
    store.change_mark()
    parent_backend = backend_pid(store)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without pytest's teardown
        code = 1
        try:
            store.put(ROW.replace(version="2"))
            seen = store.get(ROW.name, "2") is not None
            os.write(write, json.dumps({"backend": backend_pid(store), "seen": seen,
                                        "mark": store.change_mark()}).encode())
            code = 0
        except BaseException as e:
            os.write(write, json.dumps({"error": repr(e)}).encode())
        finally:
            os._exit(code)
    os.close(write)
    try:
        wait_until(lambda: os.waitpid(pid, os.WNOHANG) != (0, 0), timeout=30)
    except AssertionError:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    with os.fdopen(read) as f:
        child = json.loads(f.read())
    assert "error" not in child, child
    assert child["seen"] and child["backend"] != parent_backend
    # the parent's session outlived the child (which never closed it) and sees its write
    assert backend_pid(store) == parent_backend
    assert store.get(ROW.name, "2") is not None
    wait_until(lambda: store.change_mark() >= child["mark"], timeout=5)


# -- a database that goes away ------------------------------------------------------------

def test_a_stopped_database_is_a_503_that_says_why_then_works_again(host, postgres):
    url = postgres.new_database().replace("depot@", "depot:s3cret-pw@")  # trust ignores it
    a, b = host("a", url=url, lock_timeout=0.5), host("b", url=url)
    a.reset()
    a.put(ROW)
    mark = a.change_mark()
    where = f"127.0.0.1:{postgres.port}"
    calls = {
        "get": lambda: a.get(ROW.name, ""), "rows": a.rows, "put": lambda: a.put(ROW),
        "delete": lambda: a.delete(ROW.name, ""), "get_meta": lambda: a.get_meta("k"),
        "set_meta": lambda: a.set_meta("k", "v"), "is_fresh": a.is_fresh, "reset": a.reset,
        "check_identity": a.check_identity, "lock": lambda: a.lock("m").__enter__(),
    }
    with postgres.down():
        for name, call in calls.items():
            message = refusal(call)
            assert f"the state database at {where}" in message, (name, message)
            assert "unreachable" in message and "s3cret-pw" not in message, (name, message)
        reason = a.health()
        assert reason and "unreachable" in reason and where in reason
        assert a.change_mark() == mark  # local: still the last one heard
    wait_until(lambda: a.health() is None, timeout=15)
    assert a.get(ROW.name, "") == ROW  # the same store object, reconnected
    a.put(ROW.replace(generation=9))
    b.put(ROW.replace(generation=10))  # and a's listener hears b again
    wait_until(lambda: a.change_mark() == b.change_mark(), timeout=10)
    with a.lock("m"):
        pass


def test_a_read_only_database_refuses_writes_with_a_503_and_readiness_says_so(host, postgres):
    url = postgres.new_database()
    database = url.rsplit("/", 1)[1]
    store = host(url=url)
    store.reset()

    def admin(sql: str) -> None:
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute(sql)
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = %s", (database,))  # new sessions take it up

    admin(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')

    def read_only_refusal() -> str | bool:
        try:
            store.put(ROW)
        except StateUnavailable as e:
            return "read-only" in e.message and e.message
        return False
    assert "the state database at" in wait_until(read_only_refusal, timeout=10)
    assert "read-only" in (store.health() or "")
    assert store.rows() == []  # reads go on
    admin(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
    wait_until(lambda: store.health() is None, timeout=10)
    store.put(ROW)


def test_a_database_made_again_under_a_running_store_is_refused(host, postgres):
    url = postgres.new_database()
    database = url.rsplit("/", 1)[1]
    store = host(url=url)
    store.reset()
    store.put(ROW)
    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{database}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{database}" OWNER depot')

    def replaced() -> str | bool:
        try:
            store.check_identity()
        except StateUnavailable as e:
            return "not the one this deployment opened" in e.message and e.message
        return False
    assert "restart the deployment" in wait_until(replaced, timeout=10)
    assert "not the one" in refusal(lambda: store.put(ROW))
    assert "not the one" in (store.health() or "")


@pytest.mark.parametrize("error, status, fragment", [
    (pg.DiskFull("could not extend file"), 507, "state database at"),
    (pg.ReadOnlySqlTransaction("cannot execute INSERT"), 503, "read-only"),
    (pg.AdminShutdown("terminating connection"), 503, "unreachable"),
    (psycopg.OperationalError("connection failed: refused"), 503, "unreachable"),
    (pg.TooManyConnections("sorry, too many clients already"), 503, "refused the call"),
    (OSError(errno.ENOSPC, "No space left on device"), 507, "state folder"),
    (OSError(errno.EROFS, "Read-only file system"), 503, "state folder"),
], ids=["disk-full", "read-only", "shutdown", "refused", "too-many", "enospc", "erofs"])
def test_refused_names_what_refused_the_write(tmp_path, error, status, fragment):
    store = PostgresStore("postgresql://u:s3cret@db.example:5433/depot", tmp_path)  # no I/O
    refused = store.refused(error)
    assert refused is not None and refused.status == status
    assert fragment in refused.message and "s3cret" not in refused.message


@pytest.mark.parametrize("error", [ValueError("x"), pg.UniqueViolation("dup"),
                                   OSError(errno.ENOENT, "gone")], ids=["value", "unique", "enoent"])
def test_refused_leaves_other_failures_alone(tmp_path, error):
    assert PostgresStore("postgresql://h/db", tmp_path).refused(error) is None

