"""XGBoost models: boosters and sklearn-API wrappers in .json, .ubj or .bst.

``predict`` answers what the artifact's own ``predict`` answers: classes for
a saved XGBClassifier, the booster's scores for anything else (a raw booster
trained with ``xgb.train``), as MLServer does."""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from .base import Runtime

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
        config = json.loads(booster.save_config())["learner"]
        objective = config["objective"]["name"]
        # A saved XGBClassifier says so; anything else (a raw booster from
        # xgb.train, a saved XGBRegressor) answers what the booster predicts,
        # as MLServer does by loading it into an XGBRegressor.
        saved_as = json.loads(booster.attr("scikit_learn") or "{}").get("_estimator_type")
        self._classifier = saved_as == "classifier"
        model = xgb.XGBClassifier() if self._classifier else xgb.XGBRegressor()
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
        classes = max(int(config["learner_model_param"].get("num_class", "0")), 2)
        if self._classifier:
            self.labels = self.class_labels(getattr(model, "classes_", None))
            self.outputs = ["predict", "predict_proba"]
            self.signatures = {"predict": ("INT64", [-1, 1]),
                               "predict_proba": ("FP32", [-1, int(model.n_classes_)])}
        else:
            scores = classes if objective == "multi:softprob" else 1
            self.outputs = ["predict"]
            self.signatures = {"predict": ("FP32", [-1, scores])}
            if objective in PROBABILITY_OBJECTIVES:
                self.outputs.append("predict_proba")
                self.signatures["predict_proba"] = ("FP32", [-1, classes])

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        if not (self._direct and isinstance(x, np.ndarray)):
            if self._classifier:
                return {o: np.asarray(getattr(self._model, o)(x)) for o in outputs}
            values = np.asarray(self._model.predict(x))
            return {o: _derive(self._objective, o, values, False) for o in outputs}
        # The booster's own fast path: the scikit-learn wrapper adds about
        # 75 µs a call (config contexts through the C API) to the same
        # inplace_predict, and its answers are derived here as it does.
        values = self._booster.inplace_predict(x, missing=self._model.missing)
        return {o: _derive(self._objective, o, values, self._classifier) for o in outputs}


#: objectives of a raw booster whose scores are class probabilities
PROBABILITY_OBJECTIVES = ("binary:logistic", "multi:softprob")
#: objectives whose predict and predict_proba follow from the booster's values
DIRECT_OBJECTIVES = ("binary:logistic", "multi:softprob", "reg:squarederror", "reg:logistic",
                     "reg:absoluteerror", "reg:pseudohubererror", "reg:squaredlogerror",
                     "count:poisson", "reg:gamma", "reg:tweedie")


def _derive(objective: str, output: str, values: np.ndarray, classifier: bool) -> np.ndarray:
    """What XGBClassifier / XGBRegressor return for ``output``, from the
    booster's values: class 1's probability for binary:logistic, one row of
    class probabilities for multi:softprob, the prediction for regressors
    (and raw boosters, whose ``predict`` is those scores as they are)."""
    if output == "predict" and not classifier:
        return values
    if objective == "binary:logistic":
        if output == "predict_proba":
            return np.vstack((1 - values, values)).T
        return (values > 0.5).astype(np.int64)
    if objective == "multi:softprob":
        return values if output == "predict_proba" else np.argmax(values, axis=1)
    return values
