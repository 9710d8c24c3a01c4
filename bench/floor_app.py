"""The transport floor: a Flask app that does all a V2 server does but the model.

It reads and parses the body, finds the first input's row count and answers
a fixed V2 reply of that size. Served by gunicorn on one core, its rate is
the most any Flask + gunicorn server can answer there.
"""
import orjson
from flask import Flask, Response, request

app = Flask(__name__)


@app.get("/v2/health/ready")
def ready() -> Response:
    return Response(b'{"ready":true}', mimetype="application/json")


@app.post("/v2/models/<name>/infer")
def infer(name: str) -> Response:
    try:
        first = orjson.loads(request.get_data())["inputs"][0]
        rows = first["shape"][0]
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return Response(b'{"error":"bad request"}', status=400, mimetype="application/json")
    reply = {"model_name": name, "id": "0", "parameters": {},
             "outputs": [{"name": "predict", "shape": [rows, 1], "datatype": "INT64",
                          "parameters": {"content_type": "np"}, "data": [0] * rows}]}
    return Response(orjson.dumps(reply), mimetype="application/json")
