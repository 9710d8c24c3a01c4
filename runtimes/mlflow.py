"""MLflow models: the folder that holds an ``MLmodel`` file, of any flavour,
loaded as a python_function model.

``predict`` answers what ``mlflow.pyfunc.load_model(folder).predict`` answers,
as numpy. A model whose signature names its columns gets a request's plain
array as a DataFrame with those names, which is what pyfunc checks against."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._imports import framework
from .base import InputRejected, Runtime

#: MLflow column type -> V2 datatype
TYPES = {"double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32",
         "string": "BYTES", "binary": "BYTES", "boolean": "BOOL", "datetime": "BYTES"}


class MLflowRuntime(Runtime):
    name = "mlflow"
    suffixes = ()
    markers = ("MLmodel",)
    implementations = ("mlserver_mlflow.MLflowRuntime", "mlflow")

    def load(self) -> None:
        # Before the first import, which reads them. Telemetry: importing
        # mlflow would otherwise start a thread that calls MLflow's servers
        # and write an installation id under ~/.config. Logging: mlflow would
        # give its loggers their own plain-text stderr handler, replacing any
        # the server set; without it they propagate like every other logger.
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
        pyfunc = framework("mlflow.pyfunc", "mlflow-skinny")
        self._model = pyfunc.load_model(str(self.path))
        self._refusal = framework("mlflow.exceptions", "mlflow-skinny").MlflowException
        schema = self._model.metadata.get_input_schema()
        self._inputs = schema
        self._columns: list[str] | None = None
        if schema is not None and not schema.is_tensor_spec():
            self.n_features = len(schema.inputs)
            if schema.has_input_names():
                self._columns = schema.input_names()
        self.outputs = ["predict"]
        out = self._model.metadata.get_output_schema()
        if out is not None:
            self.signatures = {"predict": _signature(out)}

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        if self._columns is not None and isinstance(x, np.ndarray) and x.ndim == 2:
            import pandas as pd

            x = pd.DataFrame(x, columns=self._columns)
        try:
            return {"predict": _array(self._model.predict(x))}
        except self._refusal as e:
            # "Failed to enforce schema of data '<the rows>' with schema
            # '<all columns>'. Error: <what is wrong>": the client needs the end
            said = str(e)
            if not said.startswith("Failed to enforce schema") or "Error: " not in said:
                raise
            raise InputRejected("the input does not fit the model's signature: "
                                + said.rsplit("Error: ", 1)[1]) from None

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs as the model's signature declares them, when it has one."""
        described = super().metadata()
        if self._inputs is None:
            return described
        if self._inputs.is_tensor_spec():
            described["inputs"] = [
                {"name": t.name or f"input-{n}", "datatype": _numpy_datatype(t.type),
                 "shape": [-1 if d is None else d for d in t.shape]}
                for n, t in enumerate(self._inputs.inputs)]
        else:
            described["inputs"] = [
                {"name": c.name or f"input-{n}", "datatype": _datatype(c.type), "shape": [-1]}
                for n, c in enumerate(self._inputs.inputs)]
        return described


def _datatype(column_type: Any) -> str:
    """An MLflow column type as V2 names it; arrays, objects and maps (no
    tensor type of V2's) as BYTES."""
    return TYPES.get(getattr(column_type, "name", ""), "BYTES")


def _numpy_datatype(dtype: Any) -> str:
    kind = {"f": "FP", "i": "INT", "u": "UINT"}.get(np.dtype(dtype).kind)
    if kind:
        return f"{kind}{np.dtype(dtype).itemsize * 8}"
    return "BOOL" if np.dtype(dtype).kind == "b" else "BYTES"


def _signature(schema: Any) -> tuple[str, list[int]]:
    """The datatype and shape of ``predict`` from the output schema."""
    if schema.is_tensor_spec():
        spec = schema.inputs[0]
        return _numpy_datatype(spec.type), [-1 if d is None else d for d in spec.shape]
    kinds = {_datatype(c.type) for c in schema.inputs}
    # mixed columns make an object array, answered as BYTES
    return (kinds.pop() if len(kinds) == 1 else "BYTES"), [-1, len(schema.inputs)]


def _array(value: Any) -> np.ndarray:
    """pyfunc answers an array, a DataFrame, a Series or a list, by flavour."""
    return value.to_numpy() if hasattr(value, "to_numpy") else np.asarray(value)
