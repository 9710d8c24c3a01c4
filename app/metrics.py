"""Inference metrics, counted in every worker and read as one.

gunicorn runs several processes, so the counters live in prometheus-client's
multiprocess files (one set per process, memory-mapped, summed when read).
The same numbers serve Triton's statistics extension (``/v2/models/stats``)
and Prometheus (``/metrics``), so the two can never disagree.
"""
from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

LABELS = ("model", "version")
PHASES = ("input", "infer", "output")  # decode, predict, encode: Triton's compute_*
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, multiprocess_dir: Path | None = None) -> None:
        # prometheus_client picks its value store when first imported, from
        # PROMETHEUS_MULTIPROC_DIR, which gunicorn.conf.py sets after it has
        # imported app.settings: so the import waits until an app is made.
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry()
        r = self.registry
        self.duration = Histogram("depot_inference_request_duration_seconds",
                                  "Time to answer a successful inference request.", LABELS,
                                  buckets=BUCKETS, registry=r)
        self.failures = Counter("depot_inference_request_failures",
                                "Inference requests for a known model that failed.", LABELS,
                                registry=r)
        self.failure_seconds = Counter("depot_inference_request_failure_seconds",
                                       "Time spent on failed inference requests.", LABELS,
                                       registry=r)
        self.rows = Counter("depot_inference_rows", "Rows (batch items) inferred.", LABELS,
                            registry=r)
        self.compute = Counter("depot_inference_compute_seconds",
                               "Time in each phase of successful requests.", LABELS + ("phase",),
                               registry=r)
        self.last = Gauge("depot_inference_last_timestamp_seconds",
                          "When the model last answered a request (Unix time).", LABELS,
                          multiprocess_mode="max", registry=r)
        self.control = Histogram("depot_model_control_duration_seconds",
                                 "Load and unload calls, by outcome.", ("model", "action", "outcome"),
                                 buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30), registry=r)
        self._children: dict[tuple[str, str], tuple] = {}

    def track(self, model: str, version: str) -> "Tracker":
        children = self._children.get((model, version))
        if children is None:  # labels() costs a lookup per call: keep the children
            children = self._children[(model, version)] = (
                self.duration.labels(model, version), self.failures.labels(model, version),
                self.failure_seconds.labels(model, version), self.rows.labels(model, version),
                tuple(self.compute.labels(model, version, p) for p in PHASES),
                self.last.labels(model, version))
        return Tracker(children)

    def control_call(self, model: str, action: str, seconds: float, ok: bool) -> None:
        self.control.labels(model, action, "success" if ok else "failure").observe(seconds)

    def collected(self) -> Any:
        """A fresh registry whose collect() sums every worker's numbers."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        merged = CollectorRegistry()
        if self.multiprocess_dir is None:
            merged.register(_Frozen(list(self.registry.collect())))
        else:
            MultiProcessCollector(merged, path=str(self.multiprocess_dir))
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


class _ModelStates:
    """Read at each scrape: how many versions are READY, and each one's state."""

    def __init__(self, rows: Callable[[], list[Any]]) -> None:
        self.rows = rows

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        rows = self.rows()
        loaded = GaugeMetricFamily("depot_models_loaded", "Model versions READY to serve.",
                                   value=sum(row.state == "READY" for row in rows))
        state = GaugeMetricFamily("depot_model_state",
                                  "1 for the state each model version is in.",
                                  labels=["model", "version", "state"])
        for row in rows:
            state.add_metric([row.name, row.version, row.state], 1)
        return [loaded, state]


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

    successes = get("depot_inference_request_duration_seconds_count")
    zero = duration(0, 0)
    return {
        "name": model,
        "version": version,
        "last_inference": int(get("depot_inference_last_timestamp_seconds") * 1000),
        "inference_count": int(get("depot_inference_rows_total")),
        "execution_count": int(successes),
        "inference_stats": {
            "success": duration(successes, get("depot_inference_request_duration_seconds_sum")),
            "fail": duration(get("depot_inference_request_failures_total"),
                             get("depot_inference_request_failure_seconds_total")),
            "queue": duration(successes, 0),  # no queue: a worker takes a request when free
            **{f"compute_{p}": duration(successes,
                                        get(f"depot_inference_compute_seconds_total:{p}"))
               for p in PHASES},
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
        "response_stats": {},
        "memory_usage": [],
    }


class Tracker:
    """Times one request's phases; records success or failure on exit."""

    __slots__ = ("_children", "_start", "_last", "_phases", "rows")

    def __init__(self, children: tuple) -> None:
        self._children = children
        self._start = self._last = time.perf_counter()
        self._phases: list[float] = []
        self.rows = 0

    def phase_done(self) -> None:
        now = time.perf_counter()
        self._phases.append(now - self._last)
        self._last = now

    def __enter__(self) -> "Tracker":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        duration, failures, failure_seconds, rows, compute, last = self._children
        elapsed = time.perf_counter() - self._start
        if kind is not None:
            failures.inc()
            failure_seconds.inc(elapsed)
            return
        duration.observe(elapsed)
        rows.inc(self.rows)
        for child, seconds in zip(compute, self._phases):
            child.inc(seconds)
        last.set(time.time())
