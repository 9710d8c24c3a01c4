"""ONNX models (.onnx), run by ONNX Runtime on the CPU.

The outputs are the graph's own, by name (skl2onnx's classifiers: ``label``
and ``probabilities``); ``predict`` answers what ``InferenceSession.run``
answers for the outputs asked, the first one by default. A model of one
input takes the request's array; a model of several takes a DataFrame and
feeds each input from the column of its name."""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ._imports import framework
from .base import InputRejected, Runtime

#: ONNX element type -> (V2 datatype, the numpy dtype ONNX Runtime takes)
TYPES: dict[str, tuple[str, Any]] = {
    "float": ("FP32", np.float32), "double": ("FP64", np.float64),
    "float16": ("FP16", np.float16), "bfloat16": ("BF16", None),
    "int8": ("INT8", np.int8), "int16": ("INT16", np.int16),
    "int32": ("INT32", np.int32), "int64": ("INT64", np.int64),
    "uint8": ("UINT8", np.uint8), "uint16": ("UINT16", np.uint16),
    "uint32": ("UINT32", np.uint32), "uint64": ("UINT64", np.uint64),
    "bool": ("BOOL", np.bool_), "string": ("BYTES", object),
}


class ONNXRuntime(Runtime):
    name = "onnx"
    suffixes = (".onnx",)
    implementations = ("mlserver_onnx.OnnxModel", "onnx", "onnxruntime")

    def load(self) -> None:
        # Before the first import, which reads it: ONNX Runtime's Linux wheels
        # otherwise start Microsoft's telemetry on import, a thread and an
        # event queue with a device id under ~/.cache/Microsoft.
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        ort = framework("onnxruntime", "onnxruntime")
        options = ort.SessionOptions()
        # One thread per worker: gunicorn runs a process per core, and a
        # thread pool per session across forked workers only fights for them.
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        # ONNX Runtime writes its warnings to stderr in its own format; every
        # server log line is JSON. Errors still raise.
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                             providers=["CPUExecutionProvider"])
        self._inputs = self._session.get_inputs()
        self.outputs = [o.name for o in self._session.get_outputs()]
        self.signatures = {o.name: (_datatype(o.type), _shape(o.type, o.shape))
                           for o in self._session.get_outputs()}
        only = self._inputs[0] if len(self._inputs) == 1 else None
        if only is not None and len(only.shape) == 2 and isinstance(only.shape[1], int):
            self.n_features = only.shape[1]

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        values = self._session.run(outputs, self._feeds(x))
        return {o: _array(v) for o, v in zip(outputs, values)}

    def _feeds(self, x: Any) -> dict[str, np.ndarray]:
        if len(self._inputs) == 1:
            only = self._inputs[0]
            array = x.to_numpy() if hasattr(x, "to_numpy") else np.asarray(x)
            if array.ndim == 1 and len(only.shape) == 2:
                array = array.reshape(1, -1)
            return {only.name: _cast(array, only.type)}
        if not hasattr(x, "columns"):
            names = ", ".join(i.name for i in self._inputs)
            raise InputRejected(f"the model takes {len(self._inputs)} inputs ({names}): "
                                "send them as columns of one DataFrame (content type 'pd')")
        feeds = {}
        for i in self._inputs:
            if i.name not in x.columns:
                raise InputRejected(f"the model needs an input named {i.name!r}")
            column = x[i.name].to_numpy()
            feeds[i.name] = _cast(column if len(i.shape) == 1 else column.reshape(-1, 1), i.type)
        return feeds

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """The graph's inputs and outputs as it declares them."""
        def described(args: list[Any]) -> list[dict[str, Any]]:
            return [{"name": a.name, "datatype": _datatype(a.type),
                     "shape": _shape(a.type, a.shape)} for a in args]
        return {"inputs": described(self._inputs),
                "outputs": described(self._session.get_outputs())}


def _element(onnx_type: str) -> str:
    """The element type of ``tensor(float)``, of skl2onnx's ZipMap output
    ``seq(map(int64,tensor(float)))`` (its values), and so on."""
    inner = onnx_type.rsplit("tensor(", 1)[-1] if "tensor(" in onnx_type else onnx_type
    return inner.split(")", 1)[0]


def _datatype(onnx_type: str) -> str:
    return TYPES.get(_element(onnx_type), ("BYTES", object))[0]


def _shape(onnx_type: str, shape: Any) -> list[int]:
    """Symbolic and unknown dimensions as -1. A sequence of maps (ZipMap)
    declares no shape: it is answered as a rows x classes matrix."""
    if onnx_type.startswith("seq(map("):
        return [-1, -1]
    return [d if isinstance(d, int) and d >= 0 else -1 for d in (shape or [])]


def _cast(array: np.ndarray, onnx_type: str) -> np.ndarray:
    """The array in the dtype the input declares. BYTES arrive as bytes and
    ONNX Runtime would read them as their repr ("b'...'"): strings it is."""
    dtype = TYPES.get(_element(onnx_type), (None, None))[1]
    if dtype is object:
        return np.array([v.decode() if isinstance(v, bytes) else v for v in array.ravel()],
                        dtype=object).reshape(array.shape)
    return array if dtype is None else array.astype(dtype, copy=False)


def _array(value: Any) -> np.ndarray:
    """An output as numpy. skl2onnx's ZipMap answers a list of
    ``{class: probability}`` per row: one row of probabilities each, in the
    class order the dicts keep (the model's)."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return np.array([list(row.values()) for row in value], dtype=np.float32)
    return np.asarray(value)
