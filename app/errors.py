"""The failures Depot reports, each a class whose status is a class attribute.

Code that finds a problem raises the class that names it; each door renders
it in one place (app/web/errors.py for the Flask app's answers,
app/server/answers.py for those the server writes itself). Every one is a
:class:`runtimes.base.Failure`, as a runtime's
:class:`~runtimes.base.InputRejected` is, so one renderer serves both. An
error about a model takes the model's name (and version, state, ...) and
words its message itself, so one failure reads the same wherever it is
raised. Nothing here imports Flask: the registry, the protocol and the
server raise these freely.
"""
from __future__ import annotations

from runtimes.base import Failure


def label(name: str, version: str | None) -> str:
    """A model version as messages name it (the name alone when it has none)."""
    return f"{name!r} version {version!r}" if version else repr(name)


class DepotError(Failure):
    """Base class of the server's own errors: an unexpected failure, 500."""


class BadRequest(DepotError):
    """The request is malformed or does not fit the model."""

    status = 400


class ModelNotFound(DepotError):
    """No model of that name is in the repository, or, when ``version`` is
    given, the model is but has no such version."""

    status = 404

    def __init__(self, name: str, version: str | None = None) -> None:
        self.name, self.version = name, version
        super().__init__(f"model {name!r} has no version {version!r}" if version is not None
                         else f"model {name!r} not found: it is not in the repository")


class ModelNotReady(DepotError):
    """The model is known but cannot serve now (unloaded, failed, loading).

    400 rather than 503: load balancers retry a 503, which is wrong for a
    model that was unloaded on purpose.
    """

    status = 400

    def __init__(self, name: str, version: str, state: str, reason: str) -> None:
        self.name, self.version, self.state, self.reason = name, version, state, reason
        super().__init__(f"model {label(name, version)} is not ready ({state}: {reason})")


class ModelChanging(DepotError):
    """Loads and unloads of the model came faster than this process could
    catch up with them, several times over: the client may simply retry."""

    status = 400

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"model {name!r} is changing too fast to serve; try again")


class LoadFailed(DepotError):
    """The model's artifact could not be loaded; the reason is in the index."""

    status = 400


class ModelBusy(DepotError):
    """Another load or unload of the model held its lock past DEPOT_LOCK_TIMEOUT.

    409 rather than a wait without end: a loader that hangs (or is stopped)
    must not take every worker that calls after it down with it.
    """

    status = 409

    def __init__(self, name: str, seconds: float) -> None:
        self.name, self.seconds = name, seconds
        super().__init__(f"model {name!r} is busy: another load or unload has held it "
                         f"for {seconds:g} s; try again")


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
    """The client was too slow sending its request (its head, or its body
    stopped mid-way); the connection ends."""

    status = 408


class PayloadTooLarge(DepotError):
    status = 413


class Malformed(DepotError):
    """The request cannot be framed: the connection must end after the
    answer, since where the next request would start is unknown. The
    classes below give the status."""


class BodyTooLarge(PayloadTooLarge, Malformed):
    """A request's body is over DEPOT_MAX_BODY_BYTES (``length`` None: a
    chunked body, known only to be longer); refused before it is read."""

    def __init__(self, length: int | None, limit: int) -> None:
        self.length, self.limit = length, limit
        super().__init__(f"request body too large: {length} bytes, the limit is {limit} bytes "
                         "(DEPOT_MAX_BODY_BYTES)" if length is not None else
                         f"request body too large: over {limit} bytes (DEPOT_MAX_BODY_BYTES)")


class MalformedChunks(BadRequest, Malformed):
    """A chunked body that breaks HTTP/1.1's framing: where it ends, and so
    where the next request starts, is unknown; the connection ends."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        super().__init__(f"malformed chunked body: {problem}")


class Forbidden(DepotError):
    status = 403


class URITooLong(DepotError):
    status = 414


class ExpectationFailed(DepotError):
    status = 417


class HeadersTooLarge(DepotError):
    status = 431


class NotImplementedCoding(DepotError):
    """A transfer coding the server does not implement."""

    status = 501


class UnsupportedMediaType(DepotError):
    """A body in a content coding Depot cannot read."""

    status = 415
