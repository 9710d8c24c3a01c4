"""The optional framework runtimes (LightGBM, CatBoost, ONNX Runtime, MLflow)
answer exactly what their library answers on the same rows, one row or many,
and turn a request of the wrong shape into the client's 400.

Every model is trained here on a little synthetic data, in process."""
from __future__ import annotations

import os
from pathlib import Path

# What the runtimes set before their first import, set here before the test's
# own: no telemetry from the test run (a device id in ~/.cache, MLflow's calls)
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import catboost
import lightgbm as lgb
import mlflow.models
import mlflow.pyfunc
import mlflow.sklearn
import numpy as np
import onnxruntime as ort
import pandas as pd
import pytest
import sklearn
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import runtimes
from runtimes.base import InputRejected, RequestedOutput, Runtime
from runtimes.catboost import CatBoostRuntime
from runtimes.lightgbm import LightGBMRuntime
from runtimes.mlflow import MLflowRuntime
from runtimes.onnx import ONNXRuntime

RNG = np.random.default_rng(7)
X = RNG.random((80, 4))
X32 = X.astype(np.float32)
Y_BINARY = (X[:, 0] + X[:, 1] > 1).astype(int)
Y_MULTI = (X[:, 0] * 3).astype(int)
Y_VALUE = X[:, 0] * 3 + X[:, 1]


def loaded(cls: type[Runtime], path: Path) -> Runtime:
    runtime = cls(path, parameters={})
    runtime.load()
    return runtime


def rejects(runtime: Runtime, x: object) -> None:
    """A request the model cannot take is the client's 400, not a 500."""
    with pytest.raises(InputRejected):
        runtime.infer(x, [RequestedOutput(name) for name in runtime.outputs])


# -- LightGBM ---------------------------------------------------------------

def lightgbm_model(estimator: lgb.LGBMModel, y: np.ndarray, tmp_path: Path
                   ) -> tuple[LightGBMRuntime, lgb.LGBMModel]:
    estimator.set_params(n_estimators=6, num_leaves=7, min_child_samples=5, verbose=-1)
    estimator.fit(X, y)
    path = tmp_path / "model.bst"  # MLServer's name: any name will do
    estimator.booster_.save_model(path)
    return loaded(LightGBMRuntime, path), estimator


@pytest.mark.parametrize("y,classes", [(Y_BINARY, 2), (Y_MULTI, 3)])
def test_lightgbm_classifier_matches_lightgbm(y: np.ndarray, classes: int, tmp_path: Path) -> None:
    runtime, model = lightgbm_model(lgb.LGBMClassifier(), y, tmp_path)
    assert runtime.outputs == ["predict", "predict_proba"]
    assert runtime.n_features == 4
    assert runtime.signatures["predict_proba"] == ("FP64", [-1, classes])
    for x in (X[:1], X, pd.DataFrame(X)):
        got = runtime.predict(x, runtime.outputs)
        np.testing.assert_allclose(got["predict"], model.booster_.predict(x))
        np.testing.assert_allclose(got["predict_proba"], model.predict_proba(x))
        assert got["predict"].dtype == np.float64


def test_lightgbm_regressor_matches_lightgbm(tmp_path: Path) -> None:
    runtime, model = lightgbm_model(lgb.LGBMRegressor(), Y_VALUE, tmp_path)
    assert runtime.outputs == ["predict"]
    for x in (X[:1], X):
        np.testing.assert_allclose(runtime.predict(x, ["predict"])["predict"], model.predict(x))


def test_lightgbm_rejects_a_wrong_column_count(tmp_path: Path) -> None:
    runtime, _ = lightgbm_model(lgb.LGBMRegressor(), Y_VALUE, tmp_path)
    rejects(runtime, X[:, :3])
    rejects(runtime, pd.DataFrame(X[:, :3]))  # not checked before: lightgbm refuses it


# -- CatBoost ---------------------------------------------------------------

def catboost_model(estimator: catboost.CatBoost, y: np.ndarray, tmp_path: Path
                   ) -> tuple[CatBoostRuntime, catboost.CatBoost]:
    estimator.set_params(iterations=8, depth=3, verbose=0, thread_count=1,
                         allow_writing_files=False)
    estimator.fit(X, y)
    path = tmp_path / "model.cbm"
    estimator.save_model(str(path))
    assert runtimes.for_artifact(path) is CatBoostRuntime
    return loaded(CatBoostRuntime, path), estimator


@pytest.mark.parametrize("y,kind", [(Y_BINARY, "INT64"), (Y_MULTI + 1, "INT64"),
                                    (np.array(["no", "yes"])[Y_BINARY], "BYTES")])
def test_catboost_classifier_matches_catboost(y: np.ndarray, kind: str, tmp_path: Path) -> None:
    runtime, model = catboost_model(catboost.CatBoostClassifier(), y, tmp_path)
    classes = len(np.unique(y))
    assert runtime.outputs == ["predict", "predict_proba"]
    assert runtime.n_features == 4
    assert runtime.signatures == {"predict": (kind, [-1, 1]),
                                  "predict_proba": ("FP64", [-1, classes])}
    assert runtime.labels == (None if y is Y_BINARY else list(np.unique(y)))
    for x in (X[:1], X):
        got = runtime.predict(x, runtime.outputs)
        np.testing.assert_array_equal(got["predict"], model.predict(x))
        np.testing.assert_allclose(got["predict_proba"], model.predict_proba(x))


def test_catboost_regressor_matches_catboost(tmp_path: Path) -> None:
    runtime, model = catboost_model(catboost.CatBoostRegressor(), Y_VALUE, tmp_path)
    assert runtime.outputs == ["predict"]
    assert runtime.signatures == {"predict": ("FP64", [-1, 1])}
    for x in (X[:1], X):
        np.testing.assert_allclose(runtime.predict(x, ["predict"])["predict"], model.predict(x))


def test_catboost_rejects_a_wrong_column_count(tmp_path: Path) -> None:
    runtime, _ = catboost_model(catboost.CatBoostRegressor(), Y_VALUE, tmp_path)
    rejects(runtime, X[:, :3])
    rejects(runtime, pd.DataFrame(X[:, :3]))


# -- ONNX -------------------------------------------------------------------

def onnx_classifier(tmp_path: Path, zipmap: bool):
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(X32, Y_MULTI)
    options = None if zipmap else {id(model): {"zipmap": False}}
    graph = convert_sklearn(model, initial_types=[("input", FloatTensorType([None, 4]))],
                            options=options)
    path = tmp_path / "model.onnx"
    path.write_bytes(graph.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return loaded(ONNXRuntime, path), session, model


def test_onnx_classifier_matches_onnxruntime_and_sklearn(tmp_path: Path) -> None:
    runtime, session, model = onnx_classifier(tmp_path, zipmap=False)
    assert runtime.outputs == ["label", "probabilities"]
    assert runtime.n_features == 4
    assert runtime.signatures == {"label": ("INT64", [-1]), "probabilities": ("FP32", [-1, 3])}
    for x in (X32[:1], X32, X[:1], pd.DataFrame(X)):  # FP64 and DataFrames are cast
        got = runtime.predict(x, runtime.outputs)
        label, probabilities = session.run(None, {"input": np.asarray(x, dtype=np.float32)})
        np.testing.assert_array_equal(got["label"], label)
        np.testing.assert_array_equal(got["probabilities"], probabilities)
        np.testing.assert_array_equal(got["label"], model.predict(np.asarray(x, np.float32)))
        np.testing.assert_allclose(got["probabilities"], model.predict_proba(x), rtol=1e-4,
                                   atol=1e-6)
    assert list(runtime.predict(X32, ["probabilities"])) == ["probabilities"]
    assert list(runtime.infer(X32, [])) == ["label"]  # the first output by default


def test_onnx_one_row_as_a_vector(tmp_path: Path) -> None:
    runtime, session, _ = onnx_classifier(tmp_path, zipmap=False)
    got = runtime.predict(X32[0], ["probabilities"])["probabilities"]
    np.testing.assert_array_equal(got, session.run(["probabilities"], {"input": X32[:1]})[0])


def test_onnx_zipmap_probabilities_are_a_matrix(tmp_path: Path) -> None:
    runtime, session, model = onnx_classifier(tmp_path, zipmap=True)
    assert runtime.outputs == ["output_label", "output_probability"]
    assert runtime.signatures["output_probability"] == ("FP32", [-1, -1])
    for x in (X32[:1], X32):
        got = runtime.predict(x, runtime.outputs)
        label, maps = session.run(None, {"input": x})
        np.testing.assert_array_equal(got["output_label"], label)
        expected = np.array([[row[c] for c in model.classes_] for row in maps], np.float32)
        np.testing.assert_array_equal(got["output_probability"], expected)
        assert got["output_probability"].dtype == np.float32
        np.testing.assert_allclose(got["output_probability"], model.predict_proba(x), rtol=1e-4,
                                   atol=1e-6)


def two_input_model(tmp_path: Path):
    frame = pd.DataFrame({"a": X32[:, 0], "b": X32[:, 1]})
    model = make_pipeline(ColumnTransformer([("scale", StandardScaler(), ["a", "b"])]),
                          LinearRegression()).fit(frame, Y_VALUE)
    graph = convert_sklearn(model, initial_types=[("a", FloatTensorType([None, 1])),
                                                  ("b", FloatTensorType([None, 1]))])
    path = tmp_path / "two.onnx"
    path.write_bytes(graph.SerializeToString())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return loaded(ONNXRuntime, path), session, model, frame


def test_onnx_two_inputs_fed_by_columns(tmp_path: Path) -> None:
    runtime, session, model, frame = two_input_model(tmp_path)
    assert runtime.n_features is None
    (output,) = runtime.outputs
    # FP64 columns in another order, and one column more, are fine
    request = frame.astype(np.float64)[["b", "a"]].assign(c=1.0)
    for rows in (request[:1], request):
        got = runtime.predict(rows, [output])[output]
        feeds = {n: rows[[n]].to_numpy(np.float32) for n in ("a", "b")}
        np.testing.assert_array_equal(got, session.run(None, feeds)[0])
        np.testing.assert_allclose(got.ravel(), model.predict(rows[["a", "b"]]), rtol=1e-4)


def test_onnx_metadata_lists_the_declared_inputs_and_outputs(tmp_path: Path) -> None:
    runtime, *_ = two_input_model(tmp_path)
    (output,) = runtime.outputs
    assert runtime.metadata() == {
        "inputs": [{"name": "a", "datatype": "FP32", "shape": [-1, 1]},
                   {"name": "b", "datatype": "FP32", "shape": [-1, 1]}],
        "outputs": [{"name": output, "datatype": "FP32", "shape": [-1, 1]}]}
    classifier, *_ = onnx_classifier(tmp_path, zipmap=False)
    assert classifier.metadata() == {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "datatype": "INT64", "shape": [-1]},
                    {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]}]}


def test_onnx_rejects_what_the_graph_cannot_take(tmp_path: Path) -> None:
    runtime, *_ = onnx_classifier(tmp_path, zipmap=False)
    rejects(runtime, X32[:, :3])
    rejects(runtime, pd.DataFrame(X32[:, :3]))  # not checked before: onnxruntime refuses it
    two, *_ = two_input_model(tmp_path)
    with pytest.raises(InputRejected, match="'b'"):
        two.infer(pd.DataFrame({"a": X32[:3, 0]}), [])
    rejects(two, X32[:, :2])  # two inputs want named columns


# -- MLflow -----------------------------------------------------------------

@pytest.fixture(scope="module")
def mlflow_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    frame = pd.DataFrame(X, columns=["x1", "x2", "x3", "x4"])
    model = LogisticRegression().fit(frame, Y_MULTI)
    folder = tmp_path_factory.mktemp("mlflow") / "m"
    # pickle: MLflow's default (skops) is a package Depot does not install;
    # requirements given: inferring them runs a subprocess for seconds
    mlflow.sklearn.save_model(model, folder, serialization_format="pickle",
                              pip_requirements=[f"scikit-learn=={sklearn.__version__}"],
                              signature=mlflow.models.infer_signature(frame, Y_MULTI))
    return folder, frame


def test_mlflow_matches_pyfunc(mlflow_model: tuple[Path, pd.DataFrame]) -> None:
    folder, frame = mlflow_model
    assert runtimes.for_artifact(folder) is MLflowRuntime
    runtime = loaded(MLflowRuntime, folder)
    pyfunc = mlflow.pyfunc.load_model(str(folder))
    assert runtime.outputs == ["predict"]
    assert runtime.n_features == 4
    # the output is a 1-D tensor in the signature inferred from y
    assert runtime.signatures == {"predict": ("INT64", [-1])}
    for rows in (frame[:1], frame):
        expected = pyfunc.predict(rows)
        np.testing.assert_array_equal(runtime.predict(rows, ["predict"])["predict"], expected)
        # a plain array gets the signature's column names
        got = runtime.infer(rows.to_numpy(), [RequestedOutput("predict")])["predict"]
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(runtime.infer(X[0], [])["predict"], pyfunc.predict(frame[:1]))


def test_mlflow_metadata_is_the_signature(mlflow_model: tuple[Path, pd.DataFrame]) -> None:
    folder, _ = mlflow_model
    assert loaded(MLflowRuntime, folder).metadata() == {
        "inputs": [{"name": f"x{n}", "datatype": "FP64", "shape": [-1]} for n in range(1, 5)],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1]}]}


def test_mlflow_rejects_a_wrong_column_count(mlflow_model: tuple[Path, pd.DataFrame]) -> None:
    folder, frame = mlflow_model
    runtime = loaded(MLflowRuntime, folder)
    rejects(runtime, X[:, :3])
    with pytest.raises(InputRejected, match=r"signature: Model is missing inputs \['x4'\]\.$"):
        runtime.infer(frame.drop(columns="x4"), [])  # pyfunc's schema check refuses it


# -- every framework --------------------------------------------------------

@pytest.mark.parametrize("cls,module", [(LightGBMRuntime, "lightgbm"),
                                        (CatBoostRuntime, "catboost"),
                                        (ONNXRuntime, "onnxruntime"),
                                        (MLflowRuntime, "mlflow.pyfunc")])
def test_a_missing_framework_says_what_to_install(cls: type[Runtime], module: str,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    import importlib

    real = importlib.import_module

    def missing(name: str, *args: object) -> object:
        if name.split(".")[0] == module.split(".")[0]:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name.split(".")[0])
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(ImportError, match="pip install -r requirements-frameworks.txt"):
        cls(tmp_path / "model", parameters={}).load()


def test_the_runtimes_are_found_by_their_implementation() -> None:
    for cls in (LightGBMRuntime, CatBoostRuntime, ONNXRuntime, MLflowRuntime):
        assert runtimes.by_name(cls.name) is cls
        for implementation in cls.implementations:
            assert runtimes.for_implementation(implementation) is cls


QUIET = '''
import logging, sys
from pathlib import Path
import numpy as np
import runtimes

runtimes.all_runtimes()
frameworks = ("lightgbm", "catboost", "onnxruntime", "mlflow")
assert not [m for m in frameworks if m in sys.modules], "found, not imported"
assert "app" not in sys.modules, "runtimes/ is a public API that imports nothing from app/"
for name, path in zip(frameworks, sys.argv[1:]):
    runtime = runtimes.by_name(name.replace("onnxruntime", "onnx"))(Path(path), {})
    runtime.load()
    runtime.predict(np.ones((2, runtime.n_features or 2)), runtime.outputs)
mlflow = logging.getLogger("mlflow")
assert mlflow.handlers == [] and mlflow.propagate, "mlflow's loggers are the server's to route"
'''


def test_loading_prints_nothing_and_phones_no_one(mlflow_model: tuple[Path, pd.DataFrame],
                                                  tmp_path: Path) -> None:
    """Every line a server writes is JSON: the frameworks may not print when
    their runtime is imported, loads a model or predicts, not even ONNX
    Runtime's warnings about a graph. Nor phone home: ONNX Runtime's and
    MLflow's telemetry are off, which would write under the home folder."""
    import subprocess
    import sys

    from onnx import TensorProto, helper, numpy_helper

    lightgbm_path = tmp_path / "model.bst"
    lgb.train({"objective": "binary", "verbose": 1}, lgb.Dataset(X, Y_BINARY),
              num_boost_round=2).save_model(lightgbm_path)
    catboost_path = tmp_path / "model.cbm"
    catboost.CatBoostClassifier(iterations=2, allow_writing_files=False, verbose=0).fit(
        X, Y_BINARY).save_model(str(catboost_path))
    # an initializer no node uses: ONNX Runtime warns it removes it
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        initializer=[numpy_helper.from_array(np.zeros(3, np.float32), "unused")])
    onnx_path = tmp_path / "warns.onnx"
    onnx_path.write_bytes(helper.make_model(graph).SerializeToString())
    home = tmp_path / "home"
    home.mkdir()
    # as a server runs: not under pytest, where MLflow turns telemetry off itself
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST", "MLFLOW", "ORT_")) and k not in ("CI", "DO_NOT_TRACK")}
    env.update(HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", QUIET, str(lightgbm_path), str(catboost_path),
                           str(onnx_path), str(mlflow_model[0])],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (done.stdout, done.stderr) == ("", "")
    assert list(home.iterdir()) == []
