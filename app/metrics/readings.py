"""The counts read three ways: Prometheus's exposition, Triton's statistics, the console's traffic.

Each reading sums every worker's numbers, live and retired, as the files
hold them when it reads (this process writes the counts it holds first), so
/metrics, ``/v2/models/stats`` and the console can never disagree. /metrics
adds each model version's state, read from the shared store at the same
scrape, and may also be served on a port of its own (:meth:`Readings.serve`).
"""
from __future__ import annotations

from typing import Any, Callable

from .counters import Counters
from .files import Files
from .names import (BUCKETS, INFERENCE_COMPUTE, INFERENCE_DURATION, INFERENCE_EXECUTIONS,
                    INFERENCE_FAILURE_SECONDS, INFERENCE_FAILURES, INFERENCE_LAST,
                    INFERENCE_ROWS, LABELS, MODEL_STATE, MODELS_LOADED, PHASES)


class Readings:
    """Every worker's counts, read for Prometheus, Triton and the console."""

    def __init__(self, counters: Counters, files: Files) -> None:
        self.counters = counters
        self.files = files

    def collected(self) -> Any:
        """A fresh registry whose collect() sums every worker's numbers."""
        from prometheus_client import CollectorRegistry

        self.counters.write()  # this process's own counts are read, like every other's
        merged = CollectorRegistry()
        if self.files.folder is None:
            merged.register(_Frozen(list(self.counters.registry.collect())))
        else:
            merged.register(_Folded(self.files))
        return merged

    def exposition(self, rows: Callable[[], list[Any]]) -> bytes:
        """/metrics's body: :meth:`scrape_registry` in Prometheus's text format."""
        from prometheus_client import generate_latest

        return generate_latest(self.scrape_registry(rows))

    def scrape_registry(self, rows: Callable[[], list[Any]]) -> Any:
        """What a scrape returns: every worker's counters, every model version's state.

        The states are as ``rows()`` (the shared store) has them then."""
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
        """The console's traffic: per (model, version), summed over every worker.

        Successful and failed requests, rows, and the duration histogram's
        cumulative bucket counts (the console's rates and percentiles come
        from the difference between two readings)."""
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
        state = GaugeMetricFamily(MODEL_STATE, "1 for the state each model version is in.",
                                  labels=[*LABELS, "state"])
        for row in rows:
            state.add_metric([row.name, row.version, row.state], 1)
        return [loaded, state]


class _Folded:
    """Every worker's numbers, live and retired, read under the files' lock at each scrape."""

    def __init__(self, files: Files) -> None:
        self.files = files

    def collect(self) -> list[Any]:
        from prometheus_client.multiprocess import MultiProcessCollector

        with self.files.reading():
            return list(MultiProcessCollector(None, path=str(self.files.folder)).collect())


class _Frozen:
    """A collector of metric families made at scrape time."""

    def __init__(self, families: list[Any]) -> None:
        self.families = families

    def collect(self) -> list[Any]:
        return self.families


def _triton_stats(model: str, version: str, values: dict) -> dict[str, Any]:
    """One version's statistics in Triton's shape, from the summed samples."""
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
            **{f"compute_{p}": duration(successes, get(f"{INFERENCE_COMPUTE}_total:{p}"))
               for p in PHASES},
            "cache_hit": zero,
            "cache_miss": zero,
        },
        "batch_stats": [],
        "response_stats": {},
        "memory_usage": [],
    }
