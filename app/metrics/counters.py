"""The hot path: the metrics declared, each request timed, its counts written in batches.

Every inference request passes through :meth:`Counters.track`, so this is
the one part of the metrics where microseconds matter: the children of each
label set are looked up once and kept, a request's numbers are kept as they
are until written, and a burst's are summed and written at once (see
:meth:`Counters.count`), off the answer's path.

Nothing here imports prometheus-client at import time: it picks its value
store (memory, or the multiprocess files of :mod:`app.metrics.files`) when
first imported, from PROMETHEUS_MULTIPROC_DIR, which must be set by then.
"""
from __future__ import annotations

import bisect
import time
from types import TracebackType
from typing import Callable

from .names import (BUCKETS, CONTROL_BUCKETS, CONTROL_DURATION, CONTROL_LABELS,
                    INFERENCE_COMPUTE, INFERENCE_DURATION, INFERENCE_EXECUTIONS,
                    INFERENCE_FAILURE_SECONDS, INFERENCE_FAILURES, INFERENCE_LAST,
                    INFERENCE_ROWS, LABELS, LAST_MODE, PHASES)

#: seconds a worker that always has requests waiting may hold its counts
#: before it writes them (it writes them as soon as none waits)
WRITE_EVERY = 0.1


class Counters:
    """This process's metrics, and its counts not yet written to them."""

    def __init__(self, reserve: Callable[[], bool]) -> None:
        """Declare the metrics; ``reserve()`` is asked before each new label set.

        It makes room for it, or answers False: this process counts nothing
        (:meth:`app.metrics.files.Files.reserve`)."""
        # prometheus_client picks its value store when first imported, from
        # PROMETHEUS_MULTIPROC_DIR, which gunicorn.conf.py sets after it has
        # imported app.settings: so the import waits until an app is made.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self._reserve = reserve
        self.registry = r = CollectorRegistry()
        self.duration = Histogram(INFERENCE_DURATION,
                                  "Time to answer a successful inference request.", LABELS,
                                  buckets=BUCKETS, registry=r)
        self.failures = Counter(INFERENCE_FAILURES,
                                "Inference requests for a known model that failed.", LABELS,
                                registry=r)
        self.failure_seconds = Counter(INFERENCE_FAILURE_SECONDS,
                                       "Time spent on failed inference requests.", LABELS,
                                       registry=r)
        self.rows = Counter(INFERENCE_ROWS, "Rows (batch items) inferred.", LABELS, registry=r)
        self.executions = Counter(INFERENCE_EXECUTIONS,
                                  "Model calls that answered successful requests (fewer than "
                                  "the requests when they are batched).", LABELS, registry=r)
        self.compute = Counter(INFERENCE_COMPUTE, "Time in each phase of successful requests.",
                               LABELS + ("phase",), registry=r)
        self.last = Gauge(INFERENCE_LAST, "When the model last answered a request (Unix time).",
                          LABELS, multiprocess_mode=LAST_MODE, registry=r)
        self.control = Histogram(CONTROL_DURATION, "Load and unload calls, by outcome.",
                                 CONTROL_LABELS, buckets=CONTROL_BUCKETS, registry=r)
        self._children: dict[tuple[str, str], tuple] = {}
        #: requests counted but not yet written, and since when
        self._unwritten: list[tuple] = []
        self._unwritten_since = 0.0

    def track(self, model: str, version: str, hold: bool = False) -> "Tracker":
        """Time one inference request, counted when the tracker exits.

        ``hold``: the worker calls :meth:`write` before it next waits, so
        the counts may wait for that (see :meth:`count`)."""
        children = self._children.get((model, version))
        if children is None and not self._reserve():
            return Tracker(self, None, hold)
        if children is None:  # labels() costs a lookup per call: keep the children
            children = self._children[(model, version)] = (
                self.duration.labels(model, version), self.failures.labels(model, version),
                self.failure_seconds.labels(model, version), self.rows.labels(model, version),
                tuple(self.compute.labels(model, version, p) for p in PHASES),
                self.last.labels(model, version), self.executions.labels(model, version))
        return Tracker(self, children, hold)

    def count(self, children: tuple, seconds: float, rows: int, phases: list[float],
              ok: bool, hold: bool, executions: int = 1) -> None:
        """Add one request to this process's unwritten counts; write them unless ``hold``.

        With ``hold``, the worker writes them once it has no request
        waiting, after the answer is sent (under unbroken load, at most
        :data:`WRITE_EVERY` later). Each write to the shared files costs
        microseconds; so they are off the answer's path, and one write
        serves a burst of requests. A scrape of this process writes what it
        holds first; another process sees them microseconds after the
        answer."""
        unwritten = self._unwritten
        now = time.monotonic()
        if not unwritten:
            self._unwritten_since = now
        # the request's numbers as they are: summed when written, in one
        # loop for the burst, after the answers
        unwritten.append((children, seconds, rows, phases, ok, executions, time.time()))
        if not hold or now - self._unwritten_since >= WRITE_EVERY:
            self.write()

    def write(self) -> None:
        """Write the unwritten counts to this process's files.

        Threads may count meanwhile: what they add after the swap is the
        next write's."""
        unwritten, self._unwritten = self._unwritten, []
        totals: dict[tuple, _Counts] = {}
        for children, *numbers in unwritten:
            counts = totals.get(children)
            if counts is None:
                counts = totals[children] = _Counts()
            counts.add(*numbers)
        for children, counts in totals.items():
            counts.write(children)

    def control_call(self, model: str, action: str, seconds: float, ok: bool) -> None:
        """Count one load or unload call, written at once."""
        if self._reserve():  # control calls are rare: each may be a new label set
            self.control.labels(model, action, "success" if ok else "failure").observe(seconds)


class _Counts:
    """One label set's requests since its counts were last written."""

    __slots__ = ("ok", "seconds", "buckets", "rows", "phases", "failed", "failed_seconds",
                 "last", "executions")

    def __init__(self) -> None:
        self.ok = self.rows = self.failed = self.executions = 0
        self.seconds = self.failed_seconds = self.last = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)  # the last is +Inf
        self.phases = [0.0] * len(PHASES)

    def add(self, seconds: float, rows: int, phases: list[float], ok: bool,
            executions: int, when: float) -> None:
        if not ok:
            self.failed += 1
            self.failed_seconds += seconds
            return
        self.ok += 1
        self.seconds += seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1  # a bucket counts <= its bound
        self.rows += rows
        self.executions += executions
        for i, spent in enumerate(phases):
            self.phases[i] += spent
        self.last = max(self.last, when)

    def write(self, children: tuple) -> None:
        """One write per number, however many requests it sums.

        The histogram's sum and per-bucket counts are what its ``observe``
        writes (prometheus-client 0.26, pinned), added up first."""
        duration, failures, failure_seconds, rows, compute, last, executions = children
        if self.ok:
            duration._sum.inc(self.seconds)
            for bucket, n in zip(duration._buckets, self.buckets):
                if n:
                    bucket.inc(n)
            rows.inc(self.rows)
            executions.inc(self.executions)
            for child, spent in zip(compute, self.phases):
                child.inc(spent)
            last.set(self.last)
        if self.failed:
            failures.inc(self.failed)
            failure_seconds.inc(self.failed_seconds)


class Tracker:
    """Times one request's phases; counts its success or failure on exit."""

    __slots__ = ("_counters", "_children", "_hold", "_start", "_last", "_phases", "rows",
                 "executions")

    def __init__(self, counters: Counters, children: tuple | None, hold: bool) -> None:
        self._counters = counters
        self._children = children
        self._hold = hold
        self._start = self._last = time.perf_counter()
        self._phases: list[float] = []
        self.rows = 0
        self.executions = 1  # model calls counted for it (app/v2/batching.py)

    def phase_done(self) -> None:
        """End the current phase (:data:`PHASES`: decode, predict, encode)."""
        now = time.perf_counter()
        self._phases.append(now - self._last)
        self._last = now

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._children is None:  # this process counts nothing (Files.reserve)
            return
        self._counters.count(self._children, time.perf_counter() - self._start, self.rows,
                             self._phases, kind is None, self._hold, self.executions)
