"""The model floor: the transport floor that also runs the model.

It makes the numpy array and calls the bundled model's own ``predict``: no
registry, no checks beyond what the libraries do, no metrics. Served by
gunicorn on one core, it is the most a Flask server can do with that model
there, measured rather than added up.
"""
from pathlib import Path

import joblib
import numpy as np
import xgboost as xgb

from floor_app import make_app

MODELS = Path(__file__).resolve().parents[1] / "models"
_xgb = xgb.XGBClassifier(n_jobs=1)
_xgb.load_model(MODELS / "mushroom-xgboost" / "model.json")
PREDICT = {"mnist-svm": joblib.load(MODELS / "mnist-svm" / "model.joblib").predict,
           "mushroom-xgboost": _xgb.predict}

app = make_app(lambda name, first: PREDICT[name](
    np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])))
