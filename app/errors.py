"""The failures Depot reports, each a class whose status is a class attribute.

Code that finds a problem raises the class that names it; each door renders
it in one place (app/web/errors.py for HTTP). Every one is a
:class:`runtimes.base.Failure`, as a runtime's
:class:`~runtimes.base.InputRejected` is, so one renderer serves both.
Nothing here imports Flask: the registry, the protocol and the server raise
these freely.
"""
from __future__ import annotations

from runtimes.base import Failure


class DepotError(Failure):
    """Base class of the server's own errors: an unexpected failure, 500."""


class BadRequest(DepotError):
    """The request is malformed or does not fit the model."""

    status = 400


class ModelNotFound(DepotError):
    """No model (or no such version of it) is in the repository."""

    status = 404


class ModelNotReady(DepotError):
    """The model is known but cannot serve now (unloaded, failed, loading).

    400 rather than 503: load balancers retry a 503, which is wrong for a
    model that was unloaded on purpose.
    """

    status = 400


class LoadFailed(DepotError):
    """The model's artifact could not be loaded; the reason is in the index."""

    status = 400


class ModelBusy(DepotError):
    """Another load or unload of the model held its lock past DEPOT_LOCK_TIMEOUT.

    409 rather than a wait without end: a loader that hangs (or is stopped)
    must not take every worker that calls after it down with it.
    """

    status = 409


class InsufficientStorage(DepotError):
    """The state folder is full: the write was refused and nothing changed."""

    status = 507


class StateUnavailable(DepotError):
    """The state folder cannot be trusted or written: it is read-only, or
    its database was deleted or replaced while Depot ran."""

    status = 503


class Unauthorized(DepotError):
    status = 401
    headers = {"WWW-Authenticate": 'Bearer realm="depot"'}


class RequestTimeout(DepotError):
    """The client stopped sending its body mid-way; the connection ends."""

    status = 408


class PayloadTooLarge(DepotError):
    status = 413


class UnsupportedMediaType(DepotError):
    """A body in a content coding Depot cannot read."""

    status = 415
