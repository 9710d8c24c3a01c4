"""The transport floor: a Flask app that does all a V2 server does but the model.

It reads and parses the body, finds the first input and answers a V2 reply
with one value per row. Served by gunicorn on one core, its rate is the most
any Flask + gunicorn server can answer there. ``make_app`` also builds the
model floor (``model_floor_app.py``), which computes the values with a model.
"""
import gc
from typing import Any, Callable

import orjson
from flask import Flask, Response, request

Answer = Callable[[str, dict], Any]  # (model name, first input) -> one value per row


def make_app(answer: Answer) -> Flask:
    app = Flask(__name__)

    @app.get("/v2/health/ready")
    def ready() -> Response:
        return Response(b'{"ready":true}', mimetype="application/json")

    @app.post("/v2/models/<name>/infer")
    def infer(name: str) -> Response:
        try:
            first = orjson.loads(request.get_data())["inputs"][0]
            values = answer(name, first)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            return Response(b'{"error":"bad request"}', status=400, mimetype="application/json")
        reply = {"model_name": name, "id": "0", "parameters": {},
                 "outputs": [{"name": "predict", "shape": [len(values), 1], "datatype": "INT64",
                              "parameters": {"content_type": "np"}, "data": values}]}
        return Response(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY),
                        mimetype="application/json")

    return app


app = make_app(lambda name, first: [0] * first["shape"][0])
# What the worker imported leaves the garbage collector's walks, as in
# Depot's workers (gunicorn.conf.py): the floor pays no more for collections.
gc.freeze()
