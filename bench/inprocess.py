"""The in-process floor: the work any Python server must do for a request,
without a server: parse the JSON body, make the numpy array, predict (as the
model floor does), write the JSON reply. Prints one JSON line per case with the median in ms.

usage: python bench/inprocess.py SAMPLES_DIR [SECONDS_PER_CASE]
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import orjson

from model_floor_app import PREDICT  # the same model calls as the model floor


def median_ms(work, seconds: float) -> float:
    for _ in range(30):
        work()
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter_ns()
        work()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e6


def main(samples: Path, seconds: float) -> None:
    for name in ("mnist-svm", "mushroom-xgboost"):
        predict = PREDICT[name]
        for rows in (1, 64):
            body = (samples / f"{name}-{rows}.json").read_bytes()

            def work():
                tensor = orjson.loads(body)["inputs"][0]
                x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
                y = predict(x)
                return orjson.dumps({"outputs": [{"name": "predict", "shape": [len(y), 1],
                                                  "datatype": "INT64", "data": y}]},
                                    option=orjson.OPT_SERIALIZE_NUMPY)

            print(json.dumps({"model": name, "rows": rows, "e2e_ms": median_ms(work, seconds)}))


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 3.0)
