"""The model floor: the transport floor that also runs the model.

It parses the body, makes the numpy array, calls the bundled model's own
``predict`` and writes a V2 reply: no registry, no checks beyond what the
libraries do, no metrics. Served by gunicorn on one core, it is the most a
Flask server can do with that model there, measured rather than added up.
"""
from pathlib import Path

import joblib
import numpy as np
import orjson
import xgboost as xgb
from flask import Flask, Response, request

MODELS = Path(__file__).resolve().parents[1] / "models"
_xgb = xgb.XGBClassifier(n_jobs=1)
_xgb.load_model(MODELS / "mushroom-xgboost" / "model.json")
PREDICT = {"mnist-svm": joblib.load(MODELS / "mnist-svm" / "model.joblib").predict,
           "mushroom-xgboost": _xgb.predict}

app = Flask(__name__)


@app.get("/v2/health/ready")
def ready() -> Response:
    return Response(b'{"ready":true}', mimetype="application/json")


@app.post("/v2/models/<name>/infer")
def infer(name: str) -> Response:
    first = orjson.loads(request.get_data())["inputs"][0]
    x = np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])
    y = PREDICT[name](x)
    reply = {"model_name": name, "id": "0", "parameters": {},
             "outputs": [{"name": "predict", "shape": [len(y), 1], "datatype": "INT64",
                          "parameters": {"content_type": "np"}, "data": y}]}
    return Response(orjson.dumps(reply, option=orjson.OPT_SERIALIZE_NUMPY),
                    mimetype="application/json")
