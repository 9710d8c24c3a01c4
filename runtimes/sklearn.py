"""scikit-learn estimators and pipelines saved with joblib or pickle."""
from __future__ import annotations

from typing import Any

import numpy as np

from .base import Runtime

#: the estimator methods a client may ask for, by output name
METHODS = ("predict", "predict_proba", "transform")


class SKLearnRuntime(Runtime):
    name = "sklearn"
    suffixes = (".joblib", ".pkl", ".pickle")
    implementations = ("mlserver_sklearn.SKLearnModel", "sklearn")

    def load(self) -> None:
        import joblib

        self._estimator = joblib.load(self.path)
        # hasattr is False for methods an estimator only has in some
        # configurations (SVC without probability=True has no predict_proba)
        self.outputs = [m for m in METHODS if hasattr(self._estimator, m)]
        if not self.outputs:
            raise TypeError(f"{type(self._estimator).__name__} has none of {', '.join(METHODS)}")
        self.n_features = getattr(self._estimator, "n_features_in_", None)
        classes = getattr(self._estimator, "classes_", None)
        self.labels = self.class_labels(classes)
        if classes is None:
            self.signatures = {"predict": ("FP64", [-1, 1])}
        else:
            kind = "INT64" if classes.dtype.kind in "iu" else "BYTES"
            self.signatures = {"predict": (kind, [-1, 1]),
                               "predict_proba": ("FP64", [-1, len(classes)])}

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        return {o: np.asarray(getattr(self._estimator, o)(x)) for o in outputs}
