"""The model floor: the transport floor that also runs the model.

It makes the numpy array and calls the bundled model the fastest way its
library offers (the SVC's ``predict``, the XGBoost booster's
``inplace_predict``): no registry, no checks beyond what the libraries do, no
metrics. Served by
gunicorn on one core, it is the most a Flask server can do with that model
there, measured rather than added up.
"""
import gc
from pathlib import Path

import joblib
import numpy as np
import xgboost as xgb

from floor_app import make_app

MODELS = Path(__file__).resolve().parents[1] / "models"
_booster = xgb.Booster({"nthread": 1})
_booster.load_model(MODELS / "mushroom-xgboost" / "model.json")
PREDICT = {"mnist-svm": joblib.load(MODELS / "mnist-svm" / "model.joblib").predict,
           # the booster's fast path, as Depot's runtime takes it
           "mushroom-xgboost": lambda x: (_booster.inplace_predict(x) > 0.5).astype(np.int64)}

app = make_app(lambda name, first: PREDICT[name](
    np.asarray(first["data"], dtype=np.float32).reshape(first["shape"])))
gc.freeze()  # the models too, as a Depot worker freezes what it starts with
