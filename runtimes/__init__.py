"""Framework runtimes. Adding a framework means adding one module here that
defines a :class:`~runtimes.base.Runtime` subclass; it is found by scanning
this package, with no list to edit."""
from __future__ import annotations

import functools
import importlib
import pkgutil
from pathlib import Path

from .base import Runtime

__all__ = ["Runtime", "all_runtimes", "by_name", "for_artifact", "for_implementation"]


@functools.cache
def all_runtimes() -> tuple[type[Runtime], ...]:
    found = []
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        found += [
            obj for obj in vars(loaded).values()
            if isinstance(obj, type) and issubclass(obj, Runtime) and obj.name
            and obj.__module__ == loaded.__name__
        ]
    return tuple(found)


def by_name(name: str) -> type[Runtime] | None:
    return next((r for r in all_runtimes() if r.name == name), None)


def for_implementation(implementation: str) -> type[Runtime] | None:
    return next((r for r in all_runtimes() if implementation in r.implementations), None)


def for_artifact(path: Path) -> type[Runtime] | None:
    suffix = path.suffix.lower()
    return next((r for r in all_runtimes() if suffix in r.suffixes), None)

