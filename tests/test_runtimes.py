"""The XGBoost runtime answers exactly what XGBoost's scikit-learn wrapper
answers, for every objective, whether it takes the booster's fast path or not.
(The server tests check the bundled models end to end; these cover objectives
no bundled model has.)"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from runtimes.xgboost import DIRECT_OBJECTIVES, XGBoostRuntime

RNG = np.random.default_rng(3)
X = RNG.random((120, 6)).astype(np.float32)
X_NAN = X.copy()
X_NAN[::7, 2] = np.nan

CLASSIFIERS = [("binary:logistic", 2), ("multi:softprob", 3), ("multi:softmax", 3),
               ("binary:hinge", 2), ("binary:logitraw", 2)]
REGRESSORS = ["reg:squarederror", "count:poisson", "reg:logistic", "reg:absoluteerror"]


def fit(estimator, y: np.ndarray, tmp_path: Path, **kw) -> tuple[XGBoostRuntime, object]:
    estimator.set_params(n_estimators=8, max_depth=3, **kw)
    estimator.fit(X_NAN, y)
    path = tmp_path / "model.json"
    estimator.save_model(path)
    runtime = XGBoostRuntime(path)
    runtime.load()
    return runtime, estimator


@pytest.mark.parametrize("objective,classes", CLASSIFIERS)
def test_classifier_outputs_match_xgboost(objective: str, classes: int, tmp_path: Path) -> None:
    y = (X[:, 0] * classes).astype(int) % classes
    runtime, model = fit(xgb.XGBClassifier(objective=objective), y, tmp_path)
    for x in (X_NAN[:1], X_NAN):
        got = runtime.predict(x, runtime.outputs)
        np.testing.assert_array_equal(got["predict"], model.predict(x))
        assert got["predict"].dtype.kind in "iu"
        if objective != "binary:logitraw":  # xgboost has no probabilities for it
            np.testing.assert_allclose(got["predict_proba"], model.predict_proba(x), rtol=1e-6)


@pytest.mark.parametrize("objective", REGRESSORS)
def test_regressor_outputs_match_xgboost(objective: str, tmp_path: Path) -> None:
    y = X[:, 0] * 3 + X[:, 1] if objective != "reg:logistic" else X[:, 0]
    if objective == "count:poisson":
        y = np.round(y * 2)
    runtime, model = fit(xgb.XGBRegressor(objective=objective), y, tmp_path)
    np.testing.assert_allclose(runtime.predict(X_NAN, ["predict"])["predict"], model.predict(X_NAN),
                               rtol=1e-6)


def test_early_stopped_model_uses_its_best_iteration(tmp_path: Path) -> None:
    y = (X[:, 0] > 0.5).astype(int)
    estimator = xgb.XGBClassifier(n_estimators=200, early_stopping_rounds=2, max_depth=2,
                                  eval_metric="logloss")
    estimator.fit(X[:80], y[:80], eval_set=[(X[80:], y[80:])], verbose=False)
    assert estimator.best_iteration < 199
    estimator.save_model(tmp_path / "model.json")
    runtime = XGBoostRuntime(tmp_path / "model.json")
    runtime.load()
    np.testing.assert_allclose(runtime.predict(X, ["predict_proba"])["predict_proba"],
                               estimator.predict_proba(X), rtol=1e-6)


def test_the_fast_path_covers_the_default_objectives() -> None:
    assert {"binary:logistic", "multi:softprob", "reg:squarederror"} <= set(DIRECT_OBJECTIVES)


RAW = [("binary:logistic", 2), ("multi:softprob", 3), ("multi:softmax", 3), ("reg:squarederror", 1)]


@pytest.mark.parametrize("objective,classes", RAW)
def test_a_raw_booster_answers_its_own_predict(objective: str, classes: int, tmp_path: Path) -> None:
    """A booster from xgb.train carries no scikit-learn type: ``predict`` is
    ``Booster.predict``, the scores (MLServer loads it as an XGBRegressor),
    and ``predict_proba`` is there where the scores are probabilities."""
    y = (X[:, 0] * classes).astype(int) % classes if classes > 1 else X[:, 0] * 3
    params = {"objective": objective, "max_depth": 3}
    if objective.startswith("multi:"):
        params["num_class"] = classes
    booster = xgb.train(params, xgb.DMatrix(X_NAN, label=y), num_boost_round=6)
    booster.save_model(tmp_path / "model.json")
    runtime = XGBoostRuntime(tmp_path / "model.json")
    runtime.load()
    expected = booster.predict(xgb.DMatrix(X_NAN))
    got = runtime.predict(X_NAN, runtime.outputs)
    np.testing.assert_allclose(got["predict"], expected, rtol=1e-6)
    assert got["predict"].dtype == np.float32
    if objective in ("binary:logistic", "multi:softprob"):
        proba = got["predict_proba"]
        assert proba.shape == (len(X), classes)
        np.testing.assert_allclose(proba[:, -1] if classes == 2 else proba,
                                   expected, rtol=1e-6)
        np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    else:
        assert runtime.outputs == ["predict"]
    assert runtime.signatures["predict"] == ("FP32", [-1, classes if objective == "multi:softprob" else 1])
