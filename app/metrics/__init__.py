"""Inference metrics, counted in every worker and read as one.

gunicorn runs several processes, so the counters live in prometheus-client's
multiprocess files (one set per process, memory-mapped, summed when read).
The same numbers serve Triton's statistics extension (``/v2/models/stats``)
and Prometheus (``/metrics``), so the two can never disagree.
The files' life (allocated before use, a dead worker's folded) is
:mod:`app.metrics.files`'s.
"""
from __future__ import annotations

import bisect
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

from .files import Files
from .names import (BUCKETS, CONTROL_BUCKETS, CONTROL_DURATION, CONTROL_LABELS,
                    INFERENCE_COMPUTE, INFERENCE_DURATION, INFERENCE_EXECUTIONS,
                    INFERENCE_FAILURE_SECONDS, INFERENCE_FAILURES, INFERENCE_LAST,
                    INFERENCE_ROWS, LABELS, LAST_MODE, MODEL_STATE, MODELS_LOADED, PHASES)

#: seconds a worker that always has requests waiting may hold its counts
#: before it writes them (it writes them as soon as none waits)
WRITE_EVERY = 0.1


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        # prometheus_client picks its value store when first imported, from
        # PROMETHEUS_MULTIPROC_DIR, which gunicorn.conf.py sets after it has
        # imported app.settings: so the import waits until an app is made.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        self.files = Files(multiprocess_dir)
        self.reserve = self.files.reserve
        self.retire = self.files.retire
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram(INFERENCE_DURATION,
                                  "Time to answer a successful inference request.", LABELS,
                                  buckets=BUCKETS, registry=r)
        self.failures = Counter(INFERENCE_FAILURES,
                                "Inference requests for a known model that failed.", LABELS,
                                registry=r)
        self.failure_seconds = Counter(INFERENCE_FAILURE_SECONDS,
                                       "Time spent on failed inference requests.", LABELS,
                                       registry=r)
        self.rows = Counter(INFERENCE_ROWS, "Rows (batch items) inferred.", LABELS,
                            registry=r)
        self.executions = Counter(INFERENCE_EXECUTIONS,
                                  "Model calls that answered successful requests (fewer than "
                                  "the requests when they are batched).", LABELS, registry=r)
        self.compute = Counter(INFERENCE_COMPUTE,
                               "Time in each phase of successful requests.", LABELS + ("phase",),
                               registry=r)
        self.last = Gauge(INFERENCE_LAST,
                          "When the model last answered a request (Unix time).", LABELS,
                          multiprocess_mode=LAST_MODE, registry=r)
        self.control = Histogram(CONTROL_DURATION, "Load and unload calls, by outcome.",
                                 CONTROL_LABELS, buckets=CONTROL_BUCKETS, registry=r)
        self._children: dict[tuple[str, str], tuple] = {}
        #: requests counted but not yet written, and since when
        self._unwritten: list[tuple] = []
        self._unwritten_since = 0.0

    def track(self, model: str, version: str, hold: bool = False) -> "Tracker":
        """Time one inference request. ``hold``: the worker calls
        :meth:`write` before it next waits, so the counts may wait for that
        (see :meth:`count`)."""
        children = self._children.get((model, version))
        if children is None and not self.reserve():
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
        """Add one request to this process's unwritten counts, and write
        them unless ``hold``: the worker then writes them once it has no
        request waiting, after the answer is sent (under unbroken load, at
        most :data:`WRITE_EVERY` later). Each write to the shared files
        costs microseconds; so they are off the answer's path, and one
        write serves a burst of requests. A scrape of this process writes
        what it holds first; another process sees them microseconds after
        the answer."""
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
        """Write the unwritten counts to this process's files. (Threads
        may count meanwhile: what they add after the swap is the next
        write's.)"""
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
        if self.reserve():  # control calls are rare: each may be a new label set
            self.control.labels(model, action, "success" if ok else "failure").observe(seconds)

    def collected(self) -> Any:
        """A fresh registry whose collect() sums every worker's numbers."""
        from prometheus_client import CollectorRegistry

        self.write()  # this process's own counts are read, like every other's
        merged = CollectorRegistry()
        if self.multiprocess_dir is None:
            merged.register(_Frozen(list(self.registry.collect())))
        else:
            merged.register(_Folded(self))
        return merged

    def exposition(self, rows: Callable[[], list[Any]]) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.scrape_registry(rows))

    def scrape_registry(self, rows: Callable[[], list[Any]]) -> Any:
        """What a scrape returns: the counters of every worker, and the state
        of every model version as ``rows()`` (the shared store) has it then."""
        registry = self.collected()
        registry.register(_ModelStates(rows))
        return registry

    def serve(self, host: str, port: int, rows: Callable[[], list[Any]]) -> None:
        """/metrics on a port of its own (a thread of the calling process)."""
        from prometheus_client import start_http_server

        start_http_server(port, addr=host, registry=self.scrape_registry(rows))

    def statistics(self, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """Triton's model statistics for each (model, version) in ``keys``."""
        values: dict[tuple[str, str, str], float] = {}
        for family in self.collected().collect():
            for sample in family.samples:
                labels = sample.labels
                if "version" in labels and "le" not in labels:
                    name = sample.name + (f":{labels['phase']}" if "phase" in labels else "")
                    values[(labels["model"], labels["version"], name)] = sample.value
        return [_triton_stats(model, version, values) for model, version in keys]


    def traffic(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Per (model, version), summed over every worker: successful and
        failed requests, rows, and the duration histogram's cumulative
        bucket counts (the console's rates and percentiles come from the
        difference between two readings)."""
        found: dict[tuple[str, str], dict[str, Any]] = {}
        bounds = {float(b): i for i, b in enumerate(BUCKETS)} | {float("inf"): len(BUCKETS)}
        for family in self.collected().collect():
            for sample in family.samples:
                labels = sample.labels
                if "version" not in labels or "phase" in labels:
                    continue
                entry = found.setdefault((labels["model"], labels["version"]), {
                    "requests": 0, "failures": 0, "rows": 0,
                    "buckets": [0] * (len(BUCKETS) + 1)})
                if sample.name == f"{INFERENCE_DURATION}_bucket":
                    entry["buckets"][bounds[float(labels["le"])]] = int(sample.value)
                elif sample.name == f"{INFERENCE_DURATION}_count":
                    entry["requests"] = int(sample.value)
                elif sample.name == f"{INFERENCE_FAILURES}_total":
                    entry["failures"] = int(sample.value)
                elif sample.name == f"{INFERENCE_ROWS}_total":
                    entry["rows"] = int(sample.value)
        return found


class _ModelStates:
    """Read at each scrape: how many versions are READY, and each one's state."""

    def __init__(self, rows: Callable[[], list[Any]]) -> None:
        self.rows = rows

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        rows = self.rows()
        loaded = GaugeMetricFamily(MODELS_LOADED, "Model versions READY to serve.",
                                   value=sum(row.state == "READY" for row in rows))
        state = GaugeMetricFamily(MODEL_STATE,
                                  "1 for the state each model version is in.",
                                  labels=["model", "version", "state"])
        for row in rows:
            state.add_metric([row.name, row.version, row.state], 1)
        return [loaded, state]


class _Folded:
    """Every worker's numbers, live and retired, read under the files' lock
    at each scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> list[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        folder = self.metrics.multiprocess_dir
        with self.metrics.files.reading():
            return list(MultiProcessCollector(None, path=str(folder)).collect())


class _Frozen:
    """A collector of metric families made at scrape time."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def _triton_stats(model: str, version: str, values: dict) -> dict[str, Any]:
    def get(name: str) -> float:
        return values.get((model, version, name), 0.0)

    def duration(count: float, seconds: float) -> dict[str, int]:
        return {"count": int(count), "ns": int(round(seconds * 1e9))}

    successes = get(f"{INFERENCE_DURATION}_count")
    zero = duration(0, 0)
    return {
        "name": model,
        "version": version,
        "last_inference": int(get(INFERENCE_LAST) * 1000),
        "inference_count": int(get(f"{INFERENCE_ROWS}_total")),
        "execution_count": int(get(f"{INFERENCE_EXECUTIONS}_total")),
        "inference_stats": {
            "success": duration(successes, get(f"{INFERENCE_DURATION}_sum")),
            "fail": duration(get(f"{INFERENCE_FAILURES}_total"),
                             get(f"{INFERENCE_FAILURE_SECONDS}_total")),
            "queue": duration(successes, 0),  # no queue: a worker takes a request when free
            **{f"compute_{p}": duration(successes,
                                        get(f"{INFERENCE_COMPUTE}_total:{p}"))
               for p in PHASES},
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
        "response_stats": {},
        "memory_usage": [],
    }


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
        """One write per number, however many requests it sums. The
        histogram's sum and per-bucket counts are what its ``observe``
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

    __slots__ = ("_metrics", "_children", "_hold", "_start", "_last", "_phases", "rows",
                 "executions")

    def __init__(self, metrics: Metrics, children: tuple | None, hold: bool) -> None:
        self._metrics = metrics
        self._children = children
        self._hold = hold
        self._start = self._last = time.perf_counter()
        self._phases: list[float] = []
        self.rows = 0
        self.executions = 1  # model calls counted for it (app/v2/batching.py)

    def phase_done(self) -> None:
        now = time.perf_counter()
        self._phases.append(now - self._last)
        self._last = now

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._children is None:  # this process counts nothing (Files.reserve)
            return
        self._metrics.count(self._children, time.perf_counter() - self._start, self.rows,
                            self._phases, kind is None, self._hold, self.executions)
