"""Where Depot's own time goes, per request: one inference through the WSGI
app, no socket, split into the phases of ``app.web.api.infer``, each timed on its
own (median µs of many calls), beside the whole request and the model floor's
work for the same body. The next regression shows up in its phase.

usage: python bench/phases.py SAMPLES_DIR [SECONDS_PER_PHASE]
"""
from __future__ import annotations

import io
import logging
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import orjson
from flask import request
from werkzeug.test import EnvironBuilder

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(BENCH))

from app import create_app  # noqa: E402
from app.v2 import codec, content  # noqa: E402
from app.web.api import infer_response, request_body  # noqa: E402
from app.server.logs import JsonFormatter, JsonLogger  # noqa: E402
from app.settings import Settings  # noqa: E402
from app.environ import HOLDS_WRITES  # noqa: E402
from inprocess import median_ms  # noqa: E402
from model_floor_app import PREDICT  # noqa: E402


def median_us(work, seconds: float) -> float:
    return median_ms(work, seconds) * 1000


def access_logger() -> JsonLogger:
    """gunicorn's access logger as Depot configures it, writing to memory."""
    cfg = SimpleNamespace(accesslog="-", logconfig=None, logconfig_dict=None)
    logger = JsonLogger.__new__(JsonLogger)
    logger.cfg = cfg
    logger.access_log = logging.getLogger("bench.access")
    handler = logging.StreamHandler(open("/dev/null", "w"))  # a file, as gunicorn's
    handler.setFormatter(JsonFormatter())
    logger.access_log.handlers = [handler]
    logger.access_log.propagate = False
    logger.hold_access(True)
    return logger


def in_context(app, environ: dict, body: bytes, work):
    """``work()`` inside one request's context (what encoding needs)."""
    with app.request_context(dict(environ, **{"wsgi.input": io.BytesIO(body)})):
        return work()


def phases(app, model: str, body: bytes, seconds: float) -> dict[str, float]:
    registry = app.extensions["depot"].registry
    metrics = app.extensions["depot"].metrics
    environ = EnvironBuilder(path=f"/v2/models/{model}/infer", method="POST", data=body,
                             content_type="application/json").get_environ()
    adapter = app.url_map.bind_to_environ(environ)
    row, runtime = registry.get_ready(model)
    req = codec.decode_request(body, None)
    x = content.model_input(req, runtime.content_type)
    results = runtime.infer(x, req.outputs)
    logger = access_logger()
    status = SimpleNamespace(status="200 OK")
    held = dict(environ, **{HOLDS_WRITES: True})
    took = timedelta(microseconds=500)

    def fresh() -> dict:
        return dict(environ, **{"wsgi.input": io.BytesIO(body)})

    def whole() -> None:
        for _ in app.wsgi_app(fresh(), lambda *a: None):
            pass

    def context() -> None:
        ctx = app.request_context(fresh())
        ctx.push()
        ctx.pop()

    def body_read() -> None:
        ctx = app.request_context(fresh())
        ctx.push()
        request_body(request.environ, app.config["MAX_CONTENT_LENGTH"])
        ctx.pop()

    def encode() -> None:
        infer_response(row, req, results, None)

    def track(hold: bool = False) -> None:
        with metrics.track(row.name, row.version, hold) as t:
            t.rows = 1
            t.phase_done()
            t.phase_done()
            t.phase_done()

    first = orjson.loads(body)["inputs"][0]
    floor = PREDICT[model]
    found = {
        "whole request (WSGI app)": median_us(whole, seconds),
        "routing": median_us(lambda: adapter.match(method="POST"), seconds),
        "request context": median_us(context, seconds),
        "request context and body read": median_us(body_read, seconds),
        "decode (JSON, tensor checks)": median_us(lambda: codec.decode_request(body, None),
                                                  seconds),
        "state check": median_us(lambda: registry.get_ready(model), seconds),
        "content type": median_us(lambda: content.model_input(req, runtime.content_type),
                                  seconds),
        "predict (runtime.infer)": median_us(lambda: runtime.infer(x, req.outputs), seconds),
        "encode and response": in_context(app, environ, body, lambda: median_us(encode, seconds)),
        "metrics, written": median_us(track, seconds),
        "metrics, held (the keep-alive worker writes a burst's at once)":
            median_us(lambda: track(hold=True), seconds),
        "access log line, written": median_us(lambda: logger.access(status, None, environ, took),
                                              seconds),
        "access log line, held (written a burst's at once)": median_us(
            lambda: logger.access(status, None, held, took), seconds),
        "model floor: parse, predict, encode": median_us(lambda: orjson.dumps(
            {"outputs": [{"data": floor(np.asarray(first["data"], dtype=np.float32)
                                        .reshape(first["shape"]))}]},
            option=orjson.OPT_SERIALIZE_NUMPY), seconds),
    }
    return found


def main(samples: Path, seconds: float) -> None:
    state = Path(tempfile.mkdtemp(prefix="depot-phases-"))
    app = create_app(Settings(models=ROOT / "models", state_dir=state, watch=False))
    registry = app.extensions["depot"].registry
    registry.startup()
    for model in ("mnist-svm", "mushroom-xgboost"):
        registry.load(model)
        for rows in (1, 64):
            body = (samples / f"{model}-{rows}.json").read_bytes()
            for phase, us in phases(app, model, body, seconds).items():
                print(orjson.dumps({"model": model, "rows": rows, "phase": phase,
                                    "us": round(us, 1)}).decode(), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 1.0)
