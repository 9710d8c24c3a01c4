"""The contract every framework runtime fulfils.

A runtime is built from one artifact file, learns in :meth:`load` what it can
answer (its outputs and feature count), and then maps numpy to numpy in
:meth:`predict`. It never sees JSON or HTTP: ``app.v2.codec`` has checked the
tensors before they arrive.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class Failure(Exception):
    """A failure the server answers with a status and a message: the one
    protocol every error Depot reports follows.

    The status is a class attribute, never an argument: a class names one
    kind of failure. A subclass with fields builds its message from them in
    its ``__init__``. Each door renders any ``Failure`` in one place (REST:
    a JSON body with this status). It lives here, in the public runtime API,
    so that a runtime's own errors and the server's are one kind of thing,
    and ``runtimes/`` needs nothing from ``app/``."""

    status: ClassVar[int] = 500
    #: headers the answer carries (``WWW-Authenticate`` on a 401, say)
    headers: ClassVar[dict[str, str]] = {}

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class InputRejected(Failure, ValueError):
    """The request does not fit the model (its shape, its type, what the
    model itself refused): the client's mistake, answered 400 with this
    message. A runtime raises it; the server renders it."""

    status = 400


@dataclass
class RequestedOutput:
    """One output a request asks for."""

    name: str
    binary: bool = False
    classification: int = 0  # top-K classes asked for; 0 = the plain tensor


def classify(scores: np.ndarray, k: int, labels: Any = None) -> np.ndarray:
    """Triton's classification extension: per row, the top ``k`` scores as
    ``"<score>:<index>[:<label>]"``, highest first."""
    scores = scores.reshape(len(scores), -1) if scores.ndim != 2 else scores
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    out = np.empty(top.shape, dtype=object)
    for r, row in enumerate(top):
        for c, i in enumerate(row):
            text = f"{float(scores[r, i]):f}:{i}"
            out[r, c] = f"{text}:{labels[i]}" if labels is not None else text
    return out


class Runtime:
    #: the name used in the registry and in model metadata ("platform")
    name: ClassVar[str] = ""
    #: artifact file suffixes this runtime loads, lower case with the dot
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: MLServer ``implementation`` strings that mean this runtime
    implementations: ClassVar[tuple[str, ...]] = ()
    #: file names that make the folder holding them an artifact of this
    #: runtime (MLflow's ``MLmodel``): ``path`` is then that folder
    markers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, parameters: dict[str, Any] | None = None) -> None:
        self.path = path
        self.parameters = parameters or {}
        #: output names predict() can produce; the first is the default
        self.outputs: list[str] = []
        #: columns the model expects, when the artifact says
        self.n_features: int | None = None
        #: output name -> (V2 datatype, shape) for model metadata
        self.signatures: dict[str, tuple[str, list[int]]] = {}
        #: class labels by index, for the classification extension
        self.labels: list[Any] | None = None

    def load(self) -> None:
        raise NotImplementedError

    def predict(self, x: Any, outputs: list[str]) -> dict[str, np.ndarray]:
        """``x`` is what the request's content type made: a numpy array, a
        pandas DataFrame or an array of strings."""
        raise NotImplementedError

    def unload(self) -> None:
        """Release what the garbage collector cannot. Requests still running
        hold their own reference, so this must not break a predict in flight."""

    def infer(self, x: Any, requested: list[RequestedOutput]) -> dict[str, np.ndarray]:
        """Check the request against what this model takes, then predict.
        Whatever the model raises about an input is the client's 400."""
        if requested:
            self.check_outputs([o.name for o in requested])
            wanted = [self.scores_for(o) for o in requested]
        else:
            wanted = [self.default_output]
        if isinstance(x, np.ndarray):
            x = self.input_array(x)
        try:
            raw = self.predict(x, list(dict.fromkeys(wanted)) if requested else wanted)
        except InputRejected:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise InputRejected(f"the model rejected the input: {type(e).__name__}: {first}") from None
        if not requested:
            return raw
        return {o.name: classify(raw[w], o.classification, self.labels) if o.classification
                else raw[w] for o, w in zip(requested, wanted)}

    def scores_for(self, output: RequestedOutput) -> str:
        """The method whose values answer ``output``: classification of
        ``predict`` ranks the class probabilities, when there are any."""
        if output.classification and output.name == "predict" and "predict_proba" in self.outputs:
            return "predict_proba"
        return output.name

    @property
    def content_type(self) -> str | None:
        """The model's default request content type (model-settings.json)."""
        return self.parameters.get("content_type")

    @property
    def default_output(self) -> str:
        extra = self.parameters.get("extra") or {}
        wanted = extra.get("predict_fn") if isinstance(extra, dict) else None
        return wanted if wanted in self.outputs else self.outputs[0]

    def input_array(self, x: np.ndarray) -> np.ndarray:
        """The 2-D array this model takes, or a 400 that says why not."""
        if self.n_features is None:
            return x  # the artifact does not say (text pipelines, say): the model decides
        if x.dtype == object:
            raise InputRejected("the model takes numbers, not BYTES")
        if x.ndim == 1 and x.shape[0] == self.n_features:
            x = x.reshape(1, -1)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise InputRejected(f"the model expects shape [-1, {self.n_features}], "
                             f"got {list(x.shape)}")
        return x

    def check_outputs(self, requested: list[str]) -> None:
        unknown = [o for o in requested if o not in self.outputs]
        if unknown:
            raise InputRejected(
                f"unknown output {unknown[0]!r}: this model answers {', '.join(self.outputs)}"
            )

    @staticmethod
    def class_labels(classes: Any) -> list[Any] | None:
        """Labels worth showing: none when the classes are just 0..K-1."""
        if classes is None or np.array_equal(classes, np.arange(len(classes))):
            return None
        return [c.item() if hasattr(c, "item") else c for c in classes]

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs and outputs as the artifact declares them (-1 = any size)."""
        columns = self.n_features if self.n_features is not None else -1
        outputs = []
        for name in self.outputs:
            datatype, shape = self.signatures.get(name, ("FP64", [-1, -1]))
            outputs.append({"name": name, "datatype": datatype, "shape": shape})
        return {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, columns]}],
                "outputs": outputs}
