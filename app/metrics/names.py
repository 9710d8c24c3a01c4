"""What Depot's metrics are called: the names, labels and buckets every part agrees on.

Each name is written once, here. The counters declare their metrics by it,
and /metrics, Triton's statistics and the console's traffic find the samples
by it: a metric renamed in one place cannot leave a reader summing zeros.
Importing this imports nothing (prometheus-client waits, see
:mod:`app.metrics.counters`).
"""
from __future__ import annotations

LABELS = ("model", "version")
PHASES = ("input", "infer", "output")  # decode, predict, encode: Triton's compute_*
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAST_MODE = "max"  # the last-inference gauge's multiprocess mode
CONTROL_LABELS = ("model", "action", "outcome")
CONTROL_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 30)

# Counted by each worker (a histogram's samples add _bucket, _count and _sum
# to its name, a counter's _total)
INFERENCE_DURATION = "depot_inference_request_duration_seconds"
INFERENCE_FAILURES = "depot_inference_request_failures"
INFERENCE_FAILURE_SECONDS = "depot_inference_request_failure_seconds"
INFERENCE_ROWS = "depot_inference_rows"
INFERENCE_EXECUTIONS = "depot_inference_executions"
INFERENCE_COMPUTE = "depot_inference_compute_seconds"
INFERENCE_LAST = "depot_inference_last_timestamp_seconds"
CONTROL_DURATION = "depot_model_control_duration_seconds"
# Read from the shared store at each scrape
MODELS_LOADED = "depot_models_loaded"
MODEL_STATE = "depot_model_state"
