"""Depot's settings: read from the environment once, checked, then frozen.

Nothing else in Depot reads ``os.environ``. A bad value stops start-up with a
message that names the variable, instead of being quietly kept as a string.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, TypeVar

T = TypeVar("T")

TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off"}
#: MLServer's server settings, at the top of an ``mlserver start .`` project:
#: never a model; ``model_repository_root`` and ``load_models_at_startup``
#: are honoured (:func:`_mlserver_settings`), every other field is ignored
SERVER_SETTINGS = "settings.json"


class SettingsError(ValueError):
    """A DEPOT_* variable holds a value Depot cannot use."""


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in TRUE:
        return True
    if lowered in FALSE:
        return False
    raise ValueError(f"expected true/false, got {value!r}")


def parse_size(value: str) -> int:
    """Bytes, with an optional K/M/G suffix (powers of 1024)."""
    text = value.strip().upper().removesuffix("B")
    scale = 1
    for suffix, factor in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30)):
        if text.endswith(suffix):
            text, scale = text[:-1], factor
            break
    try:
        size = int(text) * scale
    except ValueError:
        raise ValueError(f"expected a size such as 65536 or 64M, got {value!r}") from None
    if size <= 0:
        raise ValueError(f"expected a positive size, got {value!r}")
    return size


def _number(value: str, convert: Callable[[str], T], what: str,
            valid: Callable[[T], bool]) -> T:
    try:
        number = convert(value)
    except ValueError:
        raise ValueError(f"expected {what}, got {value!r}") from None
    if not valid(number):
        raise ValueError(f"expected {what}, got {value!r}")
    return number


def parse_seconds(value: str) -> float:
    return _number(value, float, "a positive number of seconds", lambda s: 0 < s < float("inf"))


def parse_port(value: str) -> int:
    return _number(value, int, "a port from 1 to 65535", lambda p: 0 < p < 65536)


def parse_log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError(f"expected debug, info, warning, error or critical, got {value!r}")
    return level


POSTGRES_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite://"


def parse_state_url(value: str) -> str:
    """Where the deployment's state lives: ``sqlite:///<path>`` (the
    embedded store, in that folder) or ``postgresql://`` / ``postgres://``
    (libpq reads the rest when the store connects). Only the scheme is shown
    back in an error: the rest may hold a password."""
    url = value.strip()
    if url.startswith(POSTGRES_SCHEMES):
        return url
    if url.startswith(SQLITE_SCHEME) and url[len(SQLITE_SCHEME):].strip("/"):
        return url
    scheme, sep, _ = url.partition("://")
    got = f"a {scheme!r} URL" if sep else "no URL"
    raise ValueError("expected sqlite:///<path> or postgresql://user:password@host:port/database"
                     f", got {got}")


def is_postgres_url(url: str | None) -> bool:
    return bool(url) and url.startswith(POSTGRES_SCHEMES)


def sqlite_folder(url: str) -> Path:
    """The state folder a ``sqlite:///<path>`` URL names (any number of
    slashes before an absolute path)."""
    return Path("/" + url[len(SQLITE_SCHEME):].lstrip("/")).resolve()


def default_state_dir(models: Path) -> Path:
    """One state folder per repository, so two deployments of different
    repositories never share a registry by accident."""
    digest = hashlib.sha1(str(models).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"depot-{digest}"


@dataclass(frozen=True)
class Settings:
    models: Path
    state_dir: Path
    load_at_startup: bool = True
    api_key: str | None = None
    max_body_bytes: int = 64 << 20
    #: seconds a request's head may take to arrive, from its first byte
    header_timeout: float = 10.0
    #: bytes a second a request's body must keep up once its head is in
    min_body_rate: int = 64 << 10
    sync_interval: float = 0.05
    watch: bool = True
    rescan_interval: float = 5.0
    #: seconds a control call waits for another one on the same model
    lock_timeout: float = 10.0
    #: serve /metrics on this port too (from the master), besides the main one
    metrics_port: int | None = None
    log_level: str = "info"
    access_log: bool = True
    #: prometheus-client's multiprocess folder; gunicorn.conf.py sets it
    metrics_dir: Path | None = None
    #: follow symlinks that lead outside the models folder (a trust boundary)
    follow_symlinks: bool = False
    #: DEPOT_STATE_URL: None or ``sqlite:///…`` for SQLite in ``state_dir``,
    #: ``postgresql://…`` for PostgreSQL; kept out of repr (it may hold a password)
    state_url: str | None = field(default=None, repr=False)
    #: seconds a host may go without telling a shared store what it has
    #: applied before it stops serving (and the others stop waiting for it)
    lease_seconds: float = 10.0
    #: serve the operator console at / (app/web/console.py)
    console: bool = True

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ

        def read(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return parse(raw)
            except ValueError as e:
                raise SettingsError(f"{name}: {e}") from None

        models = Path(env.get("DEPOT_MODELS") or "models").resolve()
        mlserver = _mlserver_settings(models)
        if isinstance(mlserver.get("model_repository_root"), str):
            models = (models / mlserver["model_repository_root"]).resolve()
        load_default = mlserver.get("load_models_at_startup", True)
        state_url = read("DEPOT_STATE_URL", parse_state_url, None)
        state_dir = read("DEPOT_STATE_DIR", lambda v: Path(v).resolve(),
                         default_state_dir(models))
        if state_url is not None and state_url.startswith(SQLITE_SCHEME):
            state_dir = sqlite_folder(state_url)
        return cls(
            models=models,
            state_dir=state_dir,
            state_url=state_url,
            lease_seconds=read("DEPOT_LEASE_SECONDS", lambda v: _number(
                v, float, "seconds, at least 2", lambda x: 2 <= x < float("inf")), 10.0),
            load_at_startup=read("DEPOT_LOAD_AT_STARTUP", parse_bool,
                                 load_default if isinstance(load_default, bool) else True),
            api_key=env.get("DEPOT_API_KEY") or None,
            max_body_bytes=read("DEPOT_MAX_BODY_BYTES", parse_size, 64 << 20),
            header_timeout=read("DEPOT_HEADER_TIMEOUT", parse_seconds, 10.0),
            min_body_rate=read("DEPOT_MIN_BODY_RATE", parse_size, 64 << 10),
            sync_interval=read("DEPOT_SYNC_INTERVAL", parse_seconds, 0.05),
            watch=read("DEPOT_WATCH", parse_bool, True),
            rescan_interval=read("DEPOT_RESCAN_INTERVAL", parse_seconds, 5.0),
            lock_timeout=read("DEPOT_LOCK_TIMEOUT", parse_seconds, 10.0),
            metrics_port=read("DEPOT_METRICS_PORT", parse_port, None),
            log_level=read("DEPOT_LOG_LEVEL", parse_log_level, "info"),
            access_log=read("DEPOT_ACCESS_LOG", parse_bool, True),
            metrics_dir=read("PROMETHEUS_MULTIPROC_DIR", Path, None),
            follow_symlinks=read("DEPOT_FOLLOW_SYMLINKS", parse_bool, False),
            console=read("DEPOT_CONSOLE", parse_bool, True),
        )


def _mlserver_settings(models: Path) -> dict:
    """An ``mlserver start .`` project's settings.json, read where Depot is
    pointed (DEPOT_MODELS): its model_repository_root and
    load_models_at_startup apply unless a DEPOT_ variable says otherwise.
    {} if there is none or it cannot be read: a bad one is MLServer's
    business, not a reason to stop."""
    try:
        found = json.loads((models / SERVER_SETTINGS).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
