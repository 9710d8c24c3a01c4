"""The shared store: one truth about every model, for every worker process.

Everything above this package talks to a :class:`Store` alone: a change mark
cheap enough to read on every request, the rows, a per-model lock for
control calls, and writes that publish a row. :mod:`app.store.sqlite` keeps
it in the state folder, for one host; another store (many hosts on one
database) implements the same protocol, and nothing above needs to know
which one it talks to.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, ContextManager, Protocol

from .rows import COLUMNS, LOADING, MARKS, READY, UNAVAILABLE, Row, key

if TYPE_CHECKING:
    from ..errors import DepotError
    from ..settings import Settings

__all__ = ["COLUMNS", "LOADING", "MARKS", "READY", "UNAVAILABLE", "Row", "Store", "key",
           "open_store"]


class Store(Protocol):
    """What the registry needs of the deployment's shared state."""

    def change_mark(self) -> int:
        """A number that differs after every committed write, read locally
        (no round trip): the per-request state check compares it."""

    def get(self, name: str, version: str) -> Row | None: ...

    def rows(self) -> list[Row]: ...

    def rows_as_of(self, mark: int) -> list[Row]:
        """The rows as of ``mark`` or later, from this process's own copy
        when it has one that new: what a request's state check reads, so it
        needs the store only when the state has moved."""

    def put(self, row: Row) -> None:
        """Publish a row (insert or replace) and move the change mark."""

    def delete(self, name: str, version: str) -> None: ...

    def get_meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def is_fresh(self) -> bool:
        """Whether there is no state of this version of Depot to adopt."""

    def reset(self) -> None:
        """Forget everything: a new deployment starts from the disk."""

    def lock(self, name: str, timeout: float | None = None) -> ContextManager[None]:
        """Serialise control calls on one model across every process, with
        a deadline (``timeout``, else the store's; then
        :class:`~app.errors.ModelBusy`)."""

    def become_watcher(self) -> Callable[[], bool]:
        """Wait until this process is the deployment's one models-folder
        watcher; return a check of whether it still is (when it is not, it
        stops watching and stands again)."""

    def vouches(self) -> bool:
        """Whether this process may serve what it knows of the state: a
        host that has lost touch with a shared store stops serving (503)
        until it is back. Read on every request, so it is local."""

    def wait_applied(self) -> None:
        """Return once every live process of the deployment has applied this
        process's last write (or its lease has lapsed)."""

    def close(self) -> None:
        """This process stops: nothing is to wait for it any more."""

    def check_identity(self) -> None:
        """Raise :class:`~app.errors.StateUnavailable` unless the store is
        still the one this deployment opened."""

    def health(self) -> str | None:
        """Why the store cannot take writes now (readiness says it), or None."""

    def refused(self, e: BaseException) -> "DepotError | None":
        """The error to answer when the store refused a write, or None."""


def open_store(settings: "Settings") -> Store:
    """The store the settings name: PostgreSQL for a ``postgresql://`` state
    URL, else SQLite in the state folder."""
    from ..settings import is_postgres_url

    if is_postgres_url(settings.state_url):
        from .postgres import PostgresStore

        return PostgresStore(settings.state_url, settings.state_dir, settings.lock_timeout,
                             lease_seconds=settings.lease_seconds)
    from .sqlite import SQLiteStore

    return SQLiteStore(settings.state_dir, settings.lock_timeout)
