"""LightGBM boosters saved in LightGBM's text model format.

``predict`` answers what ``lightgbm.Booster.predict`` answers, as MLServer's
LightGBM runtime does: class 1's probability for a binary objective, a row
of class probabilities for a multiclass one, the values of a regressor.
Classifiers also answer ``predict_proba``, what ``LGBMClassifier`` would.

The model file's name says nothing (MLServer's default, ``model.bst``, is
XGBoost's suffix too), so no suffix is claimed: a model is served by this
runtime when its model-settings.json names the implementation."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._imports import framework
from .base import Runtime

#: objectives whose booster values are class probabilities
BINARY = ("binary",)
MULTICLASS = ("multiclass", "multiclassova")


class LightGBMRuntime(Runtime):
    name = "lightgbm"
    suffixes = ()
    implementations = ("mlserver_lightgbm.LightGBMModel", "lightgbm")

    def load(self) -> None:
        lgb = framework("lightgbm", "lightgbm")
        self._booster = lgb.Booster(model_file=str(self.path))
        self._objective = _objective(self.path)
        self.n_features = self._booster.num_feature()
        scores = self._booster.num_model_per_iteration()
        self.outputs = ["predict"]
        self.signatures = {"predict": ("FP64", [-1, scores])}
        if self._objective in BINARY + MULTICLASS:
            self.outputs.append("predict_proba")
            self.signatures["predict_proba"] = ("FP64", [-1, max(scores, 2)])

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        # One thread per worker: gunicorn runs a process per core, and
        # OpenMP threads across forked workers only fight for the same cores.
        values = np.asarray(self._booster.predict(x, num_threads=1))
        answers = {"predict": values}
        if "predict_proba" in outputs:
            # what LGBMClassifier.predict_proba makes of the same values
            answers["predict_proba"] = (np.vstack((1.0 - values, values)).T
                                        if self._objective in BINARY else values)
        return {o: answers[o] for o in outputs}


def _objective(path: Path) -> str:
    """The objective the model file says it was trained with, in its
    canonical name ("binary", "multiclass"; "" for a custom one). It is in
    the header, before the first tree: reading that much is cheaper than
    dumping the whole model to JSON to find it."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("objective="):
                return line.split("=", 1)[1].split(" ", 1)[0].strip()
            if line.startswith("Tree="):
                break
    return ""
