"""The contract every framework runtime fulfils.

A runtime is built from one artifact file, learns in :meth:`load` what it can
answer (its outputs and feature count), and then maps numpy to numpy in
:meth:`predict`. It never sees JSON or HTTP: ``app.codec`` has checked the
tensors before they arrive.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from app.errors import BadRequest, DepotError


class Runtime:
    #: the name used in the registry and in model metadata ("platform")
    name: ClassVar[str] = ""
    #: artifact file suffixes this runtime loads, lower case with the dot
    suffixes: ClassVar[tuple[str, ...]] = ()
    #: MLServer ``implementation`` strings that mean this runtime
    implementations: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: Path, parameters: dict[str, Any] | None = None) -> None:
        self.path = path
        self.parameters = parameters or {}
        #: output names predict() can produce; the first is the default
        self.outputs: list[str] = []
        #: columns the model expects, when the artifact says
        self.n_features: int | None = None
        #: output name -> (V2 datatype, shape) for model metadata
        self.signatures: dict[str, tuple[str, list[int]]] = {}

    def load(self) -> None:
        raise NotImplementedError

    def predict(self, x: np.ndarray, outputs: list[str]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def unload(self) -> None:
        """Release what the garbage collector cannot. Requests still running
        hold their own reference, so this must not break a predict in flight."""

    def infer(self, tensors: list[Any], requested: list[str]) -> dict[str, np.ndarray]:
        """Check the request against what this model takes, then predict.
        Whatever the model raises about an input is the client's 400."""
        outputs = self.check_outputs(requested)
        x = self.input_array(tensors)
        try:
            return self.predict(x, outputs)
        except DepotError:
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            raise BadRequest(f"the model rejected the input: {type(e).__name__}: {first}") from None

    @property
    def default_output(self) -> str:
        extra = self.parameters.get("extra") or {}
        wanted = extra.get("predict_fn") if isinstance(extra, dict) else None
        return wanted if wanted in self.outputs else self.outputs[0]

    def input_array(self, tensors: list[Any]) -> np.ndarray:
        """The one 2-D numeric array this model takes, or a 400 that says why not."""
        if len(tensors) != 1:
            raise BadRequest(f"this model takes exactly one input tensor, got {len(tensors)}")
        tensor = tensors[0]
        x = tensor.array
        if x.dtype == object:
            raise BadRequest(f"input {tensor.name!r}: the model takes numbers, not BYTES")
        if x.ndim == 1 and self.n_features is not None and x.shape[0] == self.n_features:
            x = x.reshape(1, -1)
        expected = [-1, self.n_features if self.n_features is not None else -1]
        if x.ndim != 2 or (self.n_features is not None and x.shape[1] != self.n_features):
            raise BadRequest(
                f"input {tensor.name!r}: the model expects shape {expected}, got {list(x.shape)}"
            )
        return x

    def check_outputs(self, requested: list[str]) -> list[str]:
        if not requested:
            return [self.default_output]
        unknown = [o for o in requested if o not in self.outputs]
        if unknown:
            raise BadRequest(
                f"unknown output {unknown[0]!r}: this model answers {', '.join(self.outputs)}"
            )
        return requested

    def metadata(self) -> dict[str, list[dict[str, Any]]]:
        """Inputs and outputs as the artifact declares them (-1 = any size)."""
        columns = self.n_features if self.n_features is not None else -1
        outputs = []
        for name in self.outputs:
            datatype, shape = self.signatures.get(name, ("FP64", [-1, -1]))
            outputs.append({"name": name, "datatype": datatype, "shape": shape})
        return {"inputs": [{"name": "input-0", "datatype": "FP32", "shape": [-1, columns]}],
                "outputs": outputs}
