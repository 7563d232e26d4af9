"""The curated public API (edgeuq.__all__), lazy imports, and no import circles."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import edgeuq

ROOT = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_and_artifacts_share_one_base():
    from edgeuq.artifact import Artifact

    missing = [n for n in edgeuq.__all__ if not hasattr(edgeuq, n)]
    assert missing == []
    for name in ("Checkpoint", "OnnxArtifact", "FisherReport", "QuantPlan"):
        assert issubclass(getattr(edgeuq, name), Artifact), name
    kinds = [getattr(edgeuq, n).KIND for n in ("Checkpoint", "OnnxArtifact", "FisherReport", "QuantPlan")]
    assert len(set(kinds)) == len(kinds)  # one KIND per artifact type
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        edgeuq.nope  # noqa: B018


def test_import_edgeuq_does_not_load_torch():
    code = "import sys, edgeuq; print('torch' in sys.modules, 'onnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.split() == ["False", "False"]


def _type_checking_only(node) -> bool:
    """``if TYPE_CHECKING:`` (or ``typing.TYPE_CHECKING``) with no else branch."""
    if not isinstance(node, ast.If) or node.orelse:
        return False
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _module_graph(pkg: Path):
    mods = {}
    for p in pkg.rglob("*.py"):
        parts = list(p.relative_to(pkg.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    edges = {m: set() for m in mods}
    for m, (p, is_pkg) in mods.items():
        for node in ast.parse(p.read_text()).body:  # module level only: imports inside functions are lazy
            if _type_checking_only(node):
                continue  # `if TYPE_CHECKING:` imports never run
            for n in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
                targets = []
                if isinstance(n, ast.Import):
                    targets = [a.name for a in n.names]
                elif isinstance(n, ast.ImportFrom) and n.module != "__future__":
                    base = m.split(".") if is_pkg else m.split(".")[:-1]
                    if n.level:
                        base = base[: len(base) - (n.level - 1)]
                        prefix = ".".join(base + ([n.module] if n.module else []))
                    else:
                        prefix = n.module
                    targets = [prefix] + [f"{prefix}.{a.name}" for a in n.names]
                for t in targets:
                    parts = t.split(".")
                    for i in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
                        pre = ".".join(parts[:i])
                        if pre in mods and pre != m and not m.startswith(pre + "."):
                            edges[m].add(pre)
    return edges


def _cycles(edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from . import c\n")
    (pkg / "c.py").write_text("from .a import y\n")
    (pkg / "d.py").write_text("def f():\n    from .a import y\n")  # lazy: no edge
    (pkg / "e.py").write_text("from .f import z\n")
    (pkg / "f.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import w\n")
    (pkg / "g.py").write_text("from .h import z\n")
    (pkg / "h.py").write_text("try:\n    from .g import w\nexcept ImportError:\n    pass\n")  # runs: an edge
    assert _cycles(_module_graph(pkg)) == [["p.a", "p.b", "p.c"], ["p.g", "p.h"]]


def test_no_import_circles_in_edgeuq():
    assert _cycles(_module_graph(ROOT / "edgeuq")) == []
