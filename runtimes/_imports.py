"""Importing an optional framework inside a runtime's ``load``.

The framework runtimes (LightGBM, CatBoost, ONNX Runtime, MLflow) are found
and listed whether or not their package is installed, so the server starts
without them; only loading a model of theirs needs the package, and then the
error says what to install."""
from __future__ import annotations

import importlib
from types import ModuleType

#: what installs every optional framework, pinned
REQUIREMENTS = "requirements-frameworks.txt"


def framework(module: str, package: str) -> ModuleType:
    """``import module``, or an ImportError naming ``package`` and the file
    that installs it. Only the package's own absence is translated: a package
    that is there but fails to import (a missing system library, a version
    clash) keeps its own error, which says more than "install it"."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] != module.split(".")[0]:
            raise
        raise ImportError(f"this model needs the {package!r} package, which is not installed: "
                          f"pip install -r {REQUIREMENTS}", name=e.name) from e
