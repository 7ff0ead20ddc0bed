"""The import structure: no cycle inside the package, no private name imported across modules.

Static checks (``ast``, nothing is imported): a module's imports are its ``import`` and
``from ... import`` statements anywhere in the file (function-level imports count too, so a
cycle cannot hide inside a function), except under ``if TYPE_CHECKING:``, which never runs.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "dyreg_pyg"
CHECKED = ("dyreg_pyg", "train", "benchmarks", "study")
"""Folders where no module may import another module's private (``_x``) names."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module a ``from`` import reads from."""
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, type_checking: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements of a file, at any depth, outside ``if TYPE_CHECKING:`` blocks
    (inside them too with ``type_checking``)."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and not type_checking:
            test = node.test
            name = test.id if isinstance(test, ast.Name) else \
                test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                for child in node.orelse:
                    visit(child)
                return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return found


def _python_files(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def package_import_graph(type_checking: bool = False) -> dict[str, set[str]]:
    """``{module: modules of the package it imports}`` for every module of ``dyreg_pyg``.

    ``from a import b`` reads the submodule ``a.b`` when there is one, else the names of
    ``a``'s ``__init__``. Importing ``a.b`` also runs the ``__init__`` of each package above
    it; those count as edges too, except the packages that contain the importing module
    (their ``__init__`` is already running)."""
    files = _python_files(PACKAGE)
    modules = {_module_name(p): p for p in files}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()  # modules whose code or names the import reads
        for node in _imports(path, type_checking):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(node, name, is_package)
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.add(sub if sub in modules else src)
        edges = set()
        for t in targets:
            if t in modules and t != name:
                edges.add(t)
            parts = t.split(".")
            for i in range(1, len(parts)):  # the packages above t
                m = ".".join(parts[:i])
                if m in modules and not name.startswith(m + ".") and m != name:
                    edges.add(m)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or ``None``."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def private_imports(folders: tuple[str, ...] = CHECKED) -> list[str]:
    """``file:line: from x import _name`` for every private name imported from another
    module (dunder names such as ``__version__`` are public)."""
    found = []
    for folder in folders:
        if not (ROOT / folder).is_dir():
            continue
        for path in _python_files(folder):
            for node in _imports(path):
                if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                    continue
                for alias in node.names:
                    n = alias.name
                    if n.startswith("_") and not (n.startswith("__") and n.endswith("__")):
                        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: "
                                     f"from {'.' * node.level}{node.module or ''} import {n}")
    return found


def test_the_package_has_no_import_cycle():
    graph = package_import_graph()
    assert "dyreg_pyg.models.factory" in graph and graph["dyreg_pyg.models.factory"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_no_import_cycle_even_for_type_checking():
    """Issue 34: module.py and authors.py imported each other (the one way at function
    level, the other under TYPE_CHECKING); the design has no circle, even where none runs."""
    graph = package_import_graph(type_checking=True)
    assert "dyreg_pyg.module" in graph["dyreg_pyg.authors"]
    assert "dyreg_pyg.authors" not in graph["dyreg_pyg.module"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_shared_model_code_is_imported_one_way():
    graph = package_import_graph()
    assert "dyreg_pyg.models.base" in graph["dyreg_pyg.models.factory"]
    assert "dyreg_pyg.models.base" in graph["dyreg_pyg.models.video3d"]
    assert "dyreg_pyg.models.factory" not in graph["dyreg_pyg.models.video3d"]
    assert not {"dyreg_pyg.models.factory", "dyreg_pyg.models.video3d"} & \
        graph["dyreg_pyg.models.base"]


def test_imports_for_type_checking_only_are_not_edges(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("from typing import TYPE_CHECKING\n"
                 "if TYPE_CHECKING:\n    from .a import A\nelse:\n    from .b import B\n"
                 "def g():\n    from .c import C\n")
    assert [n.module for n in _imports(f)] == ["typing", "b", "c"]


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_private_name_is_imported_across_modules():
    found = private_imports()
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_the_private_import_check_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "a.py").write_text("from __future__ import annotations\n"
                              "from .b import _hidden, public\n"
                              "from os import __name__ as n\n")
    (pkg / "c.py").write_text("def f():\n    from pkg.b import _late\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert private_imports(("pkg",)) == ["pkg/a.py:2: from .b import _hidden",
                                         "pkg/c.py:2: from pkg.b import _late"]


def test_importing_the_package_prints_no_pyg_warning_and_keeps_the_users_filters():
    """PyG's import-time ``torch.jit.script`` calls warned on every command (torch >= 2.10);
    dyreg_pyg imports PyG inside ``catch_warnings``: silent, and the filters are unchanged."""
    import subprocess

    code = ("import warnings; before = list(warnings.filters); import dyreg_pyg; "
            "assert warnings.filters == before, 'filters changed'")
    out = subprocess.run([sys.executable, "-W", "default", "-c", code], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "jit.script" not in out.stderr and "FutureWarning" not in out.stderr, out.stderr
