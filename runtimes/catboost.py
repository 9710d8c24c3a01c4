"""CatBoost models saved in CatBoost's binary format (.cbm).

``predict`` answers what the model's own estimator class answers: class
labels from ``CatBoostClassifier.predict`` (and its ``predict_proba``) for a
model trained with a classification loss, ``CatBoostRegressor.predict`` for
anything else (regression, ranking: the values, with the loss's own
transformation, Poisson's exponent say)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ._imports import framework
from .base import Runtime


class CatBoostRuntime(Runtime):
    name = "catboost"
    suffixes = (".cbm",)
    implementations = ("mlserver_catboost.CatboostModel", "catboost")

    def load(self) -> None:
        catboost = framework("catboost", "catboost")
        path = str(self.path)
        # The file says which loss it was trained with, not which class saved
        # it: MLServer loads every file as a CatBoostClassifier, whose predict
        # turns a regressor's values into nonsense classes. The loss decides.
        loss = catboost.CatBoost().load_model(path).get_all_params().get("loss_function", "RMSE")
        self._classifier = catboost.core.is_classification_objective(loss)
        cls = catboost.CatBoostClassifier if self._classifier else catboost.CatBoostRegressor
        self._model = cls().load_model(path)
        # (n_features_in_ is 0 in a loaded model; the feature names are kept)
        self.n_features = len(self._model.feature_names_ or []) or None
        if self._classifier:
            classes = np.asarray(self._model.classes_)
            self.labels = self.class_labels(classes)
            # a multilabel model answers one 0/1 column per label
            width = len(classes) if catboost.core.is_multilabel_objective(loss) else 1
            kind = "INT64" if classes.dtype.kind in "iu" else "BYTES"
            self.outputs = ["predict", "predict_proba"]
            self.signatures = {"predict": (kind, [-1, width]),
                               "predict_proba": ("FP64", [-1, len(classes)])}
        else:
            width = -1 if catboost.core.is_multiregression_objective(loss) else 1
            self.outputs = ["predict"]
            self.signatures = {"predict": ("FP64", [-1, width])}

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        # One thread per worker: gunicorn runs a process per core.
        return {o: np.asarray(getattr(self._model, o)(x, thread_count=1)) for o in outputs}
