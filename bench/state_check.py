"""Per-request cost of the shared-state check, measured in-process.

usage: python bench/state_check.py [N] [STATE_URL]

Every inference asks the registry for its model (the store's change mark,
a local read on either store, then the worker's cached runtime). This times
that call against a plain dict lookup, which is what a server without shared
state would do; STATE_URL (``postgresql://…``) times it on PostgreSQL.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.registry import Registry  # noqa: E402
from app.settings import Settings  # noqa: E402


def per_call_us(fn, n: int) -> float:
    runs = []
    for _ in range(7):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def main(n: int, state_url: str | None) -> None:
    with tempfile.TemporaryDirectory() as state:
        settings = Settings(models=ROOT / "models", state_dir=Path(state))
        if state_url:
            settings = dataclasses.replace(settings, state_url=state_url)
        registry = Registry.open(settings)
        registry.startup()
        registry.get_ready("mnist-svm")
        cache = {"mnist-svm": registry.get_ready("mnist-svm")}
        shared = per_call_us(lambda: registry.get_ready("mnist-svm"), n)
        local = per_call_us(lambda: cache["mnist-svm"], n)
        print(f"get_ready (shared-state check + cached runtime): {shared:.2f} us/call")
        print(f"plain dict lookup:                               {local:.2f} us/call")
        print(f"overhead of the shared-state check:              {shared - local:.2f} us/request")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000,
         sys.argv[2] if len(sys.argv) > 2 else None)
