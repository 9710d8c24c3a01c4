"""Adaptive batching with no added wait: the inference requests a worker has
already read, for the same model, answered by one ``predict`` over their
stacked rows.

A model's own call costs far more than its rows for small requests (an SVC
spends ~400 µs in scikit-learn's checks whatever the rows; an XGBoost
booster as much to predict one row as sixty-four), so under load one call
for sixteen requests does the work of sixteen calls at the cost of about
two. MLServer and Triton batch by waiting up to a deadline for more
requests; Depot never waits for one that has not arrived: the worker groups
the whole requests it already holds (``app/server/grouping.py``), each runs through
the app as usual in a thread of its own, and :class:`Batch` gathers them at
the model.

A model takes part when its ``model-settings.json`` gives
``max_batch_size`` above 1 (MLServer's field; ``max_batch_time`` is read by
nobody here, since nothing waits). Rows must be predicted independently of
the rows beside them, as they are for trees, SVMs and most estimators.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Protocol
from urllib.parse import unquote

import numpy as np

from runtimes.base import RequestedOutput, Runtime

#: the environ key under which the worker hands each grouped request its seat
SEAT = "depot.batch_seat"
#: seconds a request waits for the others of its batch before it predicts
#: alone (they are all read already: only a bug could make it wait that long)
MAX_WAIT = 30.0


class Limits(Protocol):
    def batch_limit(self, name: str, version: str | None = None) -> int: ...


def limit_for(registry: Limits, path: str) -> int:
    """How many requests for ``path`` one model call may answer: the
    model's ``max_batch_size`` once this process's copy is READY; 0 when
    ``path`` is not an inference route or the model does not batch."""
    parts = unquote(path).split("/")
    if parts[:3] != ["", "v2", "models"] or parts[-1] != "infer":
        return 0
    if len(parts) == 5:
        return registry.batch_limit(parts[3])
    if len(parts) == 7 and parts[4] == "versions":
        return registry.batch_limit(parts[3], parts[5])
    return 0


class Batch:
    """The rendezvous of ``size`` requests, each of which either joins with
    its input (:meth:`Seat.infer`) or leaves without one (:meth:`Seat.leave`).
    Whoever completes the set runs every input given, stacked per model and
    requested outputs, and hands each its own rows of the answer."""

    def __init__(self, size: int) -> None:
        self._lock = threading.Condition()
        self._open = size
        self._entries: list[_Entry] = []

    def seats(self) -> list["Seat"]:
        return [Seat(self) for _ in range(self._open)]

    def _take(self, entry: _Entry | None) -> list[_Entry]:
        """A seat is taken (with an entry, or none); the entries to run if
        that completes the set. Called with the lock held."""
        self._open -= 1
        if entry is not None:
            self._entries.append(entry)
        if self._open:
            return []
        entries, self._entries = self._entries, []
        return entries

    def _run(self, entries: list[_Entry]) -> None:
        groups: dict[tuple, list[_Entry]] = {}
        for entry in entries:
            groups.setdefault(entry.key, []).append(entry)
        for group in groups.values():
            if len(group) == 1 or not _stacked(group):
                for entry in group:
                    entry.run_alone()
        with self._lock:
            for entry in entries:
                entry.done = True
            self._lock.notify_all()


class Seat:
    """One request's place in a batch."""

    __slots__ = ("batch", "taken", "executions")

    def __init__(self, batch: Batch) -> None:
        self.batch = batch
        self.taken = False
        #: the model calls this request's answer is counted for: 1 for the
        #: first request of a stacked call and for one answered alone, else 0
        self.executions = 0

    def infer(self, runtime: Runtime, x: Any, requested: list[RequestedOutput]
              ) -> dict[str, np.ndarray]:
        """What ``runtime.infer(x, requested)`` answers, computed with the
        batch's other inputs for that model and outputs, if any. An input
        that cannot be stacked (not a 2-D array, or no rows) is inferred
        alone."""
        batch = self.batch
        entry = _Entry(runtime, x, requested)
        with batch._lock:
            if self.taken:
                raise RuntimeError("a batch seat infers once")
            self.taken = True
            entries = batch._take(entry)
        if entries:
            batch._run(entries)
        else:
            deadline = time.monotonic() + MAX_WAIT
            with batch._lock:
                while not entry.done and batch._lock.wait(deadline - time.monotonic()):
                    pass
                late = not entry.done
                if late:  # the set never completed: answer alone, and for no one else
                    batch._entries.remove(entry)
                    entry.done = True
            if late:
                entry.run_alone()
        self.executions = entry.executions
        return entry.answer()

    def leave(self) -> None:
        """The request is done without inferring through the batch (or has
        inferred: then this does nothing)."""
        batch = self.batch
        with batch._lock:
            if self.taken:
                return
            self.taken = True
            entries = batch._take(None)
        if entries:
            batch._run(entries)


class _Entry:
    __slots__ = ("runtime", "x", "requested", "key", "results", "error", "done", "executions")

    def __init__(self, runtime: Runtime, x: Any, requested: list[RequestedOutput]) -> None:
        self.runtime, self.x, self.requested = runtime, x, requested
        stackable = isinstance(x, np.ndarray) and x.ndim == 2 and len(x) > 0
        # inputs stack only with inputs of the same model copy, dtype, width
        # and outputs asked for (binary or not is the encoder's business)
        self.key = (id(runtime), x.dtype.str, x.shape[1], tuple(
            (o.name, o.classification) for o in requested)) if stackable else (id(self),)
        self.results: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.done = False
        self.executions = 0

    def run_alone(self) -> None:
        self.executions = 1
        try:
            self.results = self.runtime.infer(self.x, self.requested)
        except Exception as e:  # raised again in the request's own thread
            self.error = e

    def answer(self) -> dict[str, np.ndarray]:
        if self.error is not None:
            raise self.error
        assert self.results is not None
        return self.results


def _stacked(group: list[_Entry]) -> bool:
    """Answer every entry of ``group`` from one call over their stacked
    rows; False (nothing answered) if that call fails or gives an output
    that is not one row per input row: then each is answered alone, so a
    bad input gets its own error and spoils no other request."""
    first = group[0]
    try:
        results = first.runtime.infer(np.concatenate([e.x for e in group]), first.requested)
    except Exception:
        return False
    total = sum(len(e.x) for e in group)
    if not all(isinstance(v, np.ndarray) and v.ndim >= 1 and len(v) == total
               for v in results.values()):
        return False
    first.executions = 1
    start = 0
    for entry in group:
        end = start + len(entry.x)
        entry.results = {name: value[start:end] for name, value in results.items()}
        start = end
    return True
