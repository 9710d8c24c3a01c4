"""XGBoost models: boosters and sklearn-API wrappers in .json, .ubj or .bst."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from .base import Runtime

CLASSIFIER_OBJECTIVES = ("binary:", "multi:")


class XGBoostRuntime(Runtime):
    name = "xgboost"
    suffixes = (".json", ".ubj", ".bst")
    implementations = ("mlserver_xgboost.XGBoostModel", "xgboost")

    def load(self) -> None:
        import xgboost as xgb

        # Loading from bytes avoids xgboost guessing the format from the
        # suffix (.bst is UBJSON or legacy binary; the content decides).
        raw = bytearray(self.path.read_bytes())
        booster = xgb.Booster()
        booster.load_model(raw)
        objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
        is_classifier = objective.startswith(CLASSIFIER_OBJECTIVES)
        model = xgb.XGBClassifier() if is_classifier else xgb.XGBRegressor()
        model.load_model(raw)
        # One thread per worker: gunicorn runs a process per core, and
        # OpenMP threads across forked workers only fight for the same cores.
        model.set_params(n_jobs=1)
        self._model = model
        self._objective = objective
        self._booster = model.get_booster()
        self._booster.set_param({"nthread": 1})
        # An early-stopped model predicts with its best iteration, which the
        # wrapper picks: it keeps the wrapper.
        self._direct = objective in DIRECT_OBJECTIVES and booster.attr("best_iteration") is None
        self.n_features = booster.num_features()
        if is_classifier:
            self.labels = self.class_labels(getattr(model, "classes_", None))
            self.outputs = ["predict", "predict_proba"]
            self.signatures = {"predict": ("INT64", [-1, 1]),
                               "predict_proba": ("FP32", [-1, int(model.n_classes_)])}
        else:
            self.outputs = ["predict"]
            self.signatures = {"predict": ("FP32", [-1, 1])}

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        if not (self._direct and isinstance(x, np.ndarray)):
            return {o: np.asarray(getattr(self._model, o)(x)) for o in outputs}
        # The booster's own fast path: the scikit-learn wrapper adds about
        # 75 µs a call (config contexts through the C API) to the same
        # inplace_predict, and its answers are derived here as it does.
        values = self._booster.inplace_predict(x, missing=self._model.missing)
        return {o: _derive(self._objective, o, values) for o in outputs}


#: objectives whose predict and predict_proba follow from the booster's values
DIRECT_OBJECTIVES = ("binary:logistic", "multi:softprob", "reg:squarederror", "reg:logistic",
                     "reg:absoluteerror", "reg:pseudohubererror", "reg:squaredlogerror",
                     "count:poisson", "reg:gamma", "reg:tweedie")


def _derive(objective: str, output: str, values: np.ndarray) -> np.ndarray:
    """What XGBClassifier / XGBRegressor return for ``output``, from the
    booster's values: class 1's probability for binary:logistic, one row of
    class probabilities for multi:softprob, the prediction for regressors."""
    if objective == "binary:logistic":
        if output == "predict_proba":
            return np.vstack((1 - values, values)).T
        return (values > 0.5).astype(np.int64)
    if objective == "multi:softprob":
        return values if output == "predict_proba" else np.argmax(values, axis=1)
    return values
