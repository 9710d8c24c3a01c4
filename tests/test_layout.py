"""The layout's rules, checked on every run: the folders under app/ depend on
one another in one direction only, and each keeps out what is not its job.

The import graph is read from the source (every ``import`` and ``from``,
at any depth, but for ``if TYPE_CHECKING:`` blocks, which never run); what a
folder pulls in at run time is checked in a fresh interpreter, so an import
made through another module counts too.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(package: str) -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / package).rglob("*.py"))}


def _runs(node: ast.AST) -> bool:
    """False for ``if TYPE_CHECKING:``, whose imports are for type checkers."""
    test = getattr(node, "test", None)
    return not (isinstance(node, ast.If) and isinstance(test, ast.Name)
                and test.id == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: frozenset[str] = frozenset()) -> set[str]:
    """The modules ``name`` imports, absolute. ``from . import x`` counts as
    importing the module ``x`` when ``known`` has it, else the package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    stack: list[ast.AST] = [ast.parse(path.read_text())]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # a submodule by name, else the module itself
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        stack.extend(child for child in ast.iter_child_nodes(node) if _runs(child))
    return found


def graph(package: str) -> dict[str, set[str]]:
    mods = modules(package)
    known = frozenset(mods)
    return {name: {m for m in imports_of(name, path, known) if m in mods and m != name}
            for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's),
    plus a module's import of a package that imports it back."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(edges[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_app_has_no_import_cycle():
    assert cycles(graph("app")) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_runtimes_import_nothing_from_app():
    """runtimes/ is the public API user runtimes build on: it stands alone."""
    offenders = {name: sorted(m for m in imports_of(name, path) if m.split(".")[0] == "app")
                 for name, path in modules("runtimes").items()}
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize("folder, banned", [
    ("app/server", {"flask", "werkzeug", "app.web"}),
    ("app/v2", {"flask", "werkzeug", "gunicorn", "app.web", "app.server"}),
    ("app/registry", {"flask", "werkzeug", "gunicorn", "app.web", "app.server"}),
    ("app/store", {"flask", "werkzeug", "gunicorn", "app.web", "app.server", "app.registry"}),
    ("app/metrics", {"flask", "werkzeug", "gunicorn", "app.web", "app.server", "app.registry"}),
    ("runtimes", {"app", "flask", "werkzeug", "gunicorn"}),
])
def test_a_folder_pulls_in_nothing_it_must_not(folder, banned):
    """Import every module of the folder in a fresh interpreter and look at
    what came with it: a rule broken through another module counts too."""
    names = [m for m in modules(folder) if not m.endswith("__main__")]
    code = (
        "import importlib, sys\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError as e:\n"
        "        if not getattr(e, 'name', '') or e.name.split('.')[0] in ('app', 'runtimes'):\n"
        "            raise\n"  # an optional framework that is not installed is fine
        f"banned = {sorted(banned)!r}\n"
        "print(sorted({m for m in sys.modules for b in banned if m == b or m.startswith(b + '.')}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"{folder} pulls in {out.stdout.strip()}"


def test_the_command_line_needs_no_flask_and_no_numpy():
    """``python -m app index`` talks to a server: it must start quickly."""
    code = ("import sys, app.cli\n"
            "print(sorted(m for m in ('flask', 'numpy', 'gunicorn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
