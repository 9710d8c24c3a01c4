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
        return {o: np.asarray(getattr(self._model, o)(x)) for o in outputs}
