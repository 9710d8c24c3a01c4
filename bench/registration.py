"""How long a dropped model takes to appear in the index.

usage: python bench/registration.py [DROPS]

Starts a real 4-worker deployment (the tests' fixture), drops DROPS copies
of the mnist-svm artifact one at a time, and times each from the moment the
file is in place (renamed in, as a careful copier does) to the moment
``POST /v2/repository/index`` lists it.
"""
from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import MODELS, run_server, wait_until  # noqa: E402


def main(drops: int) -> None:
    times = []
    with tempfile.TemporaryDirectory() as tmp, run_server(Path(tmp)) as server:
        for i in range(drops):
            staging = Path(tmp) / f"drop-{i}.joblib"
            shutil.copy(MODELS / "mnist-svm" / "model.joblib", staging)
            t0 = time.monotonic()
            staging.rename(server.models / staging.name)
            wait_until(lambda: f"drop-{i}" in server.index(), timeout=10, every=0.01)
            times.append(time.monotonic() - t0)
    times.sort()
    print(f"registration over {drops} drops: median {statistics.median(times) * 1000:.0f} ms, "
          f"min {times[0] * 1000:.0f} ms, max {times[-1] * 1000:.0f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
