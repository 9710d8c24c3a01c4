"""The V2 protocol's meaning, the same for every door (REST now, gRPC next).

A door turns its wire format into the plain types here (an
:class:`~app.v2.codec.InferenceRequest` of numpy arrays, names and flags)
and back, and renders Depot's errors its own way; everything a request
*means* happens once, in :class:`DataPlane`: the model's state check, which
content type and outputs a request may ask for, the adaptive batch it joins,
the counts and timings, readiness, metadata, the index, load and unload.
MLServer calls this the DataPlane and Triton's C API is the same idea: no
rule is written twice, so the doors cannot disagree.
"""
from __future__ import annotations

import contextlib
import hmac
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import orjson

from ..errors import BadRequest, ModelNotFound, Unauthorized
from . import content

if TYPE_CHECKING:
    import numpy as np

    from runtimes.base import Runtime

    from ..metrics import Metrics
    from ..metrics.counters import Tracker
    from ..registry import Registry
    from ..store import Row
    from .batching import Seat
    from .codec import InferenceRequest

SERVER_NAME = "depot"
SERVER_VERSION = "0.1.0"
EXTENSIONS = ("model_repository", "model_repository(unload_dependents)", "binary_tensor_data",
              "classification", "statistics")


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]
    #: the process that watches the models folder, if one does
    watcher_pid: int | None


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    #: every named version of the model, oldest first
    versions: list[str]
    platform: str
    #: the tensors as declared (model-settings.json) or found in the
    #: artifact: ``name``, ``datatype`` and ``shape`` (-1 = any size)
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]


@dataclass(frozen=True)
class TensorConfig:
    """A tensor as a Triton model configuration describes it."""

    name: str
    data_type: str  # TYPE_FP32, TYPE_STRING, ...
    dims: list[int]

    @classmethod
    def of(cls, tensor: dict[str, Any]) -> "TensorConfig":
        datatype = tensor.get("datatype", "")
        return cls(tensor.get("name", ""),
                   "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}",
                   list(tensor.get("shape") or []))


@dataclass(frozen=True)
class ModelConfig:
    """Triton's model configuration, for ``tritonclient``'s
    ``get_model_config`` and the tools built on it, made from the same
    metadata. ``max_batch_size`` is 0, so every ``dims`` is the whole shape,
    the batch dimension (-1) included: clients send whole batches. A model's
    own ``max_batch_size`` (the worker answering waiting requests together,
    app/v2/batching.py) changes nothing a client sends."""

    name: str
    platform: str
    backend: str
    max_batch_size: int
    inputs: list[TensorConfig]
    outputs: list[TensorConfig]


@dataclass(frozen=True)
class IndexEntry:
    name: str
    version: str  # "" when the model has none
    state: str
    reason: str


class Inference:
    """One inference request inside the core: the model version that serves
    it, its runtime, and the timer that counts it.

    A door opens it with ``with`` :meth:`DataPlane.inference`, decodes its request
    (the *input* phase), calls :meth:`run` (the *infer* phase), encodes the
    answer and calls :meth:`encoded` (the *output* phase): the phases are
    Triton's ``compute_input``/``compute_infer``/``compute_output``."""

    __slots__ = ("row", "runtime", "_track")

    def __init__(self, row: "Row", runtime: "Runtime", track: "Tracker") -> None:
        self.row = row
        self.runtime = runtime
        self._track = track

    def __enter__(self) -> "Inference":
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, tb: Any) -> None:
        self._track.__exit__(kind, error, tb)

    def run(self, request: "InferenceRequest", seat: "Seat | None" = None
            ) -> "dict[str, np.ndarray]":
        """Predict: the request's tensors as its content type makes them,
        alone or in the batch the server seated it in."""
        track = self._track
        runtime = self.runtime
        x = content.model_input(request, runtime.content_type)
        track.rows = len(x) if getattr(x, "ndim", 1) else 1
        track.phase_done()
        if seat is None:
            results = runtime.infer(x, request.outputs)
        else:
            results = seat.infer(runtime, x, request.outputs)
            track.executions = seat.executions
        track.phase_done()
        return results

    def encoded(self) -> None:
        """The answer is encoded: the output phase ends."""
        self._track.phase_done()


class DataPlane:
    """What the V2 protocol and its extensions answer, over plain types.

    It holds the deployment's registry (which model versions exist, in what
    state, and this process's copies of them) and its metrics; it raises
    Depot's errors (app/errors.py) and never knows which door asked."""

    def __init__(self, registry: "Registry", metrics: "Metrics",
                 api_key: str | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self._catalog = registry.catalog  # the per-request state check
        self._key = f"Bearer {api_key}".encode() if api_key is not None else None

    # -- health and metadata --------------------------------------------------

    def unready_reason(self) -> str | None:
        """Why the server is not ready, or None when it is."""
        return self.registry.unready_reason()

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(SERVER_NAME, SERVER_VERSION, EXTENSIONS,
                              self.registry.watcher_pid())

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        """A model version's metadata; 404 if there is no such model or version."""
        row = self.registry.row(name, version)
        details = orjson.loads(row.details)
        return ModelMetadata(row.name, self.registry.versions(row.name), row.runtime or "",
                             details.get("inputs") or [], details.get("outputs") or [])

    def model_config(self, name: str, version: str | None = None) -> ModelConfig:
        """A model version's Triton configuration; 404 if there is none."""
        metadata = self.model_metadata(name, version)
        return ModelConfig(metadata.name, metadata.platform, metadata.platform, 0,
                           [TensorConfig.of(t) for t in metadata.inputs],
                           [TensorConfig.of(t) for t in metadata.outputs])

    def model_ready(self, name: str, version: str | None = None) -> None:
        """Return if the model version serves on this process, else raise
        why not (404 unknown, 400 not ready)."""
        self.registry.get_ready(name, version)

    # -- inference ------------------------------------------------------------

    def inference(self, name: str, version: str | None = None,
                  hold: bool = False) -> Inference:
        """Check the model's state and start timing one request to it; used
        as a context manager, a failure inside counts as the model's failed
        request. ``hold``: the server writes the counts once it is idle
        (app/environ.py)."""
        row, runtime = self._catalog.get_ready(name, version)
        return Inference(row, runtime, self.metrics.track(row.name, row.version, hold))

    def statistics(self, name: str | None = None,
                   version: str | None = None) -> list[dict[str, Any]]:
        """Triton's statistics extension, summed over every worker: of every
        model, of one model's versions, or of one version (404 if unknown)."""
        return self.metrics.statistics(self.registry.stats_keys(name, version))

    # -- the repository extension ---------------------------------------------

    def authorize(self, authorization: str | None) -> None:
        """Repository calls need ``Bearer <DEPOT_API_KEY>`` when a key is set."""
        if self._key is None:
            return
        if not hmac.compare_digest((authorization or "").encode(), self._key):
            raise Unauthorized("repository calls need 'Authorization: Bearer <DEPOT_API_KEY>'")

    def index(self, ready_only: Any = False) -> list[IndexEntry]:
        """Every model version with its state and why, by name and version."""
        if not isinstance(ready_only, bool):
            raise BadRequest(f"'ready' must be true or false, got {ready_only!r}")
        return [IndexEntry(r.name, r.version, r.state, r.reason)
                for r in self.registry.index(ready_only)]

    def load(self, name: str, parameters: Any = None) -> None:
        """Load (or reload) every version of a model; it returns once every
        worker of every host serves the new copy."""
        parameters = _parameters(parameters)
        unsupported = [k for k in parameters if k == "config" or k.startswith("file:")]
        if unsupported:
            raise BadRequest(f"load parameter {unsupported[0]!r} is not supported by Depot")
        with self._control(name, "load"):
            self.registry.load(name)

    def unload(self, name: str, parameters: Any = None) -> None:
        """Unload every version of a model; it returns once no worker of any
        host serves it. ``unload_dependents`` is accepted: no Depot model
        depends on another."""
        dependents = _parameters(parameters).get("unload_dependents", False)
        if not isinstance(dependents, bool):
            raise BadRequest(f"'unload_dependents' must be true or false, got {dependents!r}")
        with self._control(name, "unload"):
            self.registry.unload(name)

    @contextlib.contextmanager
    def _control(self, name: str, action: str) -> Iterator[None]:
        """Count and time a load or unload of a model the repository knows."""
        start = time.perf_counter()
        try:
            yield
        except ModelNotFound:
            raise  # not a model: no series for it
        except Exception:
            self.metrics.control_call(name, action, time.perf_counter() - start, ok=False)
            raise
        self.metrics.control_call(name, action, time.perf_counter() - start, ok=True)


def _parameters(parameters: Any) -> dict[str, Any]:
    """A control call's ``parameters`` (absent, null or empty: none)."""
    parameters = parameters or {}
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    return parameters
