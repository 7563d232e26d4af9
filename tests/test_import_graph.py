"""No import circles anywhere in edgeuq, and every module imports on its own in a fresh interpreter.

The import graph is read from the sources (AST), counting imports inside functions too: a
circle hidden behind a lazy import (``lower/tvm.py`` <-> ``tvm_check.py`` <-> ``tvm_qemu.py``
before the split) is still a circle. Imports under ``if TYPE_CHECKING:`` are not edges.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "edgeuq"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> Dict[str, Path]:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skip: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                skip.update(id(n) for n in ast.walk(sub))
    return skip


def _is_dynamic_import(node: ast.Call) -> bool:
    f = node.func
    return ((isinstance(f, ast.Attribute) and f.attr == "import_module")
            or (isinstance(f, ast.Name) and f.id in ("import_module", "__import__")))


def _dynamic_import_target(node: ast.Call):
    """The module a dynamic import names when it is a string literal, else None."""
    if _is_dynamic_import(node) and node.args and isinstance(node.args[0], ast.Constant) \
            and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


#: the only places that import modules by a computed name: package facades loading their own
#: children lazily (PEP 562) and the registry's package scan (a package importing its own modules)
DYNAMIC_IMPORT_ALLOWED = {"edgeuq/__init__.py", "edgeuq/_lazy.py", "edgeuq/registry.py"}


def dynamic_imports(path: Path) -> List[int]:
    """Lines of dynamic imports (importlib.import_module / __import__) whose target is not a literal."""
    tree = ast.parse(path.read_text(), str(path))
    return [n.lineno for n in ast.walk(tree)
            if isinstance(n, ast.Call) and _is_dynamic_import(n) and _dynamic_import_target(n) is None]


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    """edgeuq modules that ``name`` imports (a ``from P import x`` names the submodule P.x when it is one)."""
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_nodes(tree)
    is_pkg = path.name == "__init__.py"
    out: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "edgeuq":
                    out.add(alias.name)
        elif isinstance(node, ast.Call) and _dynamic_import_target(node) is not None:
            target = _dynamic_import_target(node)
            if target.split(".")[0] == "edgeuq":        # importlib.import_module("edgeuq.x"): an edge too
                out.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "edgeuq":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
    # importing a.b.c runs the packages a and a.b first (except the importer's own ancestors)
    out |= {".".join(m.split(".")[:i]) for m in out for i in range(1, m.count(".") + 1)}
    return {m for m in out if m in modules and m != name and not name.startswith(m + ".")}


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []
    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_circle():
    """The checker itself can fail: a -> b -> c -> a is one circle, d -> a is not part of it."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_reads_relative_and_lazy_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from typing import TYPE_CHECKING\nfrom .base import Evidence\nfrom .. import catalog\n"
                   "if TYPE_CHECKING:\n    from edgeuq.export import OnnxArtifact\n"
                   "def f():\n    from .tvm import qemu\n    import edgeuq.lower.compile\n")
    modules = {m: Path() for m in ("edgeuq.lower.base", "edgeuq.catalog", "edgeuq.lower.tvm", "edgeuq.lower.tvm.qemu",
                                   "edgeuq.lower.compile", "edgeuq.export", "edgeuq.lower.x", "edgeuq.lower", "edgeuq")}
    got = imports_of("edgeuq.lower.x", src, modules)
    # edgeuq.lower.tvm (a package run before its submodule qemu) counts; edgeuq.lower, an ancestor of the
    # importer itself, does not
    assert got == {"edgeuq.lower.base", "edgeuq.catalog", "edgeuq.lower.tvm", "edgeuq.lower.tvm.qemu",
                   "edgeuq.lower.compile"}


def test_edgeuq_has_no_import_circles():
    modules = all_modules()
    assert "edgeuq.lower.tvm.lowerer" in modules and "edgeuq.lower.base" in modules
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    assert "edgeuq.lower.tvm.qemu" in graph["edgeuq.lower.tvm.check"]       # the graph sees real edges
    found = cycles(graph)
    assert found == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_module_imports_in_a_fresh_interpreter():
    """Import each edgeuq module first in its own fresh interpreter would be slow (torch); instead one
    fresh interpreter per lowering module (the ones this split moved) and one for all the rest."""
    modules = sorted(all_modules())
    code = ("import importlib, sys\nbad = []\nfor m in sys.argv[1:]:\n    try:\n        importlib.import_module(m)\n"
            "    except ImportError as e:\n        if getattr(e, 'name', '') and e.name.split('.')[0] not in "
            "('edgeuq',):\n            continue  # an optional extra (tvm, hls4ml) that is not installed\n"
            "        bad.append(f'{m}: {e!r}')\n    except Exception as e:\n        bad.append(f'{m}: {e!r}')\n"
            "print('\\n'.join(bad))\nsys.exit(1 if bad else 0)\n")
    lowering = [m for m in modules if m.startswith("edgeuq.lower")]
    for group in [[m] for m in lowering] + [[m for m in modules if m not in lowering]]:
        out = subprocess.run([sys.executable, "-c", code, *group], capture_output=True, text=True, timeout=600,
                             cwd=ROOT)
        assert out.returncode == 0, f"{group[:3]}...: {out.stdout}{out.stderr[-2000:]}"


def test_missing_extra_skips_locally_and_fails_under_ci(monkeypatch):
    """tests/require_extras.py: a missing optional extra is a skip on a developer machine and a
    FAILURE under CI=true (where make test installs every extra), never a silent skip there."""
    import pytest
    from require_extras import require_extra

    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_extra_mod"):
        require_extra("no_such_extra_mod", "tvm")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: optional extra 'no_such_extra_mod'"):
        require_extra("no_such_extra_mod", "tvm")
    assert require_extra("json").dumps([1]) == "[1]"           # present: the module itself


def test_import_graph_sees_literal_dynamic_imports_and_flags_computed_ones(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("import importlib\nfrom importlib import import_module\n"
                   "def f(name):\n    importlib.import_module('edgeuq.lower.tvm')\n"
                   "    import_module(f'edgeuq.lower.{name}')\n    __import__(name)\n    importlib.import_module('os')\n")
    modules = {m: Path() for m in ("edgeuq.lower", "edgeuq.lower.tvm", "edgeuq.x")}
    assert imports_of("edgeuq.x", src, modules) == {"edgeuq.lower", "edgeuq.lower.tvm"}
    assert dynamic_imports(src) == [5, 6]


def test_no_hidden_dynamic_import_outside_the_facades_and_the_registry():
    """A module imported by a computed name is an edge no static tool sees (the scheme registry
    once imported its built-ins that way, hiding a circle): only the lazy package facades and
    the registry's package scan may do it."""
    offenders = []
    for p in sorted(PKG.rglob("*.py")):
        rel = p.relative_to(ROOT).as_posix()
        if "__pycache__" not in p.parts and rel not in DYNAMIC_IMPORT_ALLOWED:
            offenders += [f"{rel}:{line}" for line in dynamic_imports(p)]
    assert offenders == [], "imports by a computed name: " + ", ".join(offenders)
