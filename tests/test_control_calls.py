"""Control calls in threads beside the poller (app/server/background.py),
in-process: the connection is the thread's until its answer is ready, the
pipe wakes the poller then, and a call that hangs is noticed."""
from __future__ import annotations

import os
import select
import threading
from typing import Callable, Iterator

import pytest

from app.server.background import MAX_BACKGROUND, ControlCalls
from app.server.framing import Framed
from standins import detached


@pytest.fixture
def make_calls() -> Iterator[Callable[..., ControlCalls]]:
    made: list[ControlCalls] = []

    def make(respond=lambda conn, req: True, update=lambda conn: None) -> ControlCalls:
        made.append(ControlCalls(respond, update))
        return made[-1]

    yield make
    for calls in made:
        os.close(calls.wake_read)
        os.close(calls.wake_write)


def test_a_control_call_answers_in_its_thread_and_comes_back(make_calls) -> None:
    release = threading.Event()
    told: list = []

    def respond(conn, req) -> bool:
        release.wait(10)
        conn.out += b"answer to " + req
        return True

    calls = make_calls(respond, told.append)
    kept, closing = detached(), detached()
    calls.start(kept, b"load", Framed(10))
    calls.start(closing, b"unload", Framed(10, close=True))
    assert kept.busy_since and calls.running == {kept, closing} and told == [kept, closing]
    assert kept.wanted(1 << 20) == 0  # the poller leaves it to its thread
    assert list(calls.take_finished()) == []
    release.set()
    woken = select.poll()
    woken.register(calls.wake_read, select.POLLIN)
    back: dict = {}
    while len(back) < 2:
        assert woken.poll(10_000), "no thread woke the poller"
        back.update(calls.take_finished())
    assert back == {kept: True, closing: False}
    assert not calls.running and not kept.busy_since and kept.out == b"answer to load"


def test_at_most_max_background_calls_run_at_once(make_calls) -> None:
    calls = make_calls()
    calls.running.update(detached() for _ in range(MAX_BACKGROUND - 1))
    assert calls.has_room()
    calls.running.add(detached())
    assert not calls.has_room()


def test_a_call_past_the_timeout_is_an_overrun(make_calls) -> None:
    calls = make_calls()
    conn = detached()
    conn.busy_since = 100.0
    calls.running.add(conn)
    assert not calls.overrun(159.0, 60.0)
    assert calls.overrun(161.0, 60.0)
