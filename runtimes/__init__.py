"""Framework runtimes. Adding a framework means adding one module here that
defines a :class:`~runtimes.base.Runtime` subclass; it is found by scanning
this package, with no list to edit."""
from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from .base import Runtime

__all__ = ["Runtime", "all_runtimes", "by_name", "for_artifact", "for_implementation",
           "is_user", "user_runtime"]


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
    """The runtime for an artifact file, or for a folder holding one of a
    runtime's marker files."""
    if path.is_dir():
        return next((r for r in all_runtimes() if any((path / m).is_file() for m in r.markers)),
                    None)
    suffix = path.suffix.lower()
    return next((r for r in all_runtimes() if suffix in r.suffixes), None)



def is_user(name: str | None) -> bool:
    """Whether ``name`` is a runtime of one's own: ``"module.Class"``, not
    one of this package's and not an MLServer runtime Depot lacks."""
    return bool(name) and "." in name and by_name(name) is None \
        and not name.startswith("mlserver")


def user_runtime(implementation: str, folder: Path) -> type[Runtime]:
    """The :class:`Runtime` subclass ``implementation`` names. Its module is
    ``<folder>/<module>.py`` (or a package there), imported afresh for each
    copy of the folder under a name of its own, so that two models' modules
    never clash and a reload runs the new code; with the folder first on the
    import path meanwhile, for the modules beside it. Else it is found on
    the import path."""
    module_name, _, class_name = implementation.rpartition(".")
    file, package = folder / f"{module_name}.py", folder / module_name / "__init__.py"
    if "." in module_name or not (file.is_file() or package.is_file()):
        module = importlib.import_module(module_name)
    else:
        path = file if file.is_file() else package
        unique = f"{module_name}_{hashlib.sha256(str(path).encode()).hexdigest()[:16]}"
        spec = importlib.util.spec_from_file_location(
            unique, path, submodule_search_locations=[str(package.parent)] if path == package
            else None)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[unique] = module
        sys.path.insert(0, str(folder))
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[unique]
            raise
        finally:
            sys.path.remove(str(folder))
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise TypeError(f"{implementation} is not a subclass of runtimes.Runtime")
    return cls
