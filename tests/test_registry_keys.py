"""No code outside a plug-in compares a registry key (issue 20): executor, lowerer and data-source
names are looked up in their registry, and callers read a declared capability (a data source's
``native_rates``, a profiler table keyed by executor, ``rpc_timeable``) instead of
``if backend == "tvm"``. Schemes have their own scanner (tests/test_schemes_registry.py).

The scanner reads the AST (comments and docstrings never count) and flags a comparison
(``==``, ``!=``, ``in``, ``not in``) with a registered name as a string literal, alone or inside
a tuple/list/set literal. Plug-ins themselves (the executor modules, the lowering backends,
data/sources.py where the sources are declared, the compression steps in edgeuq/compress/steps/)
may name their own key.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, List, Set, Tuple

import pytest

from edgeuq.data.sources import DATA_SOURCES
from edgeuq.lower import get_lowerer
from edgeuq_runtime.executors import EXECUTORS

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("edgeuq", "bench", "scripts", "runtime/edgeuq_runtime")
BUILTIN_LOWERERS = ("onnxruntime", "tvm", "hls4ml")

#: where each registry's plug-ins live (they may name their own key)
PLUGINS = {
    "executor": ("runtime/edgeuq_runtime/executors/",),
    "lowerer": ("edgeuq/lower/tvm/", "edgeuq/lower/hls4ml/", "edgeuq/lower/onnxruntime.py"),
    "data source": ("edgeuq/data/sources.py",),
    "compression step": ("edgeuq/compress/steps/",),
}
#: a literal that is a registry key by coincidence (path:line text -> why it is not that key)
NOT_A_KEY = {
    ("edgeuq/compress/transfer.py", '"synthetic" in cfg.kinds'): "a transfer-set kind, not the data source",
}


def _literals(node: ast.AST) -> Iterable[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        for elt in node.elts:
            if isinstance(elt, ast.Constant) and isinstance(elt.value, str):
                yield elt.value


def key_comparisons(source: str, names: Set[str]) -> List[Tuple[int, str]]:
    """(line, source text) of every comparison with a registered name as a literal."""
    tree = ast.parse(source)
    lines = source.splitlines()
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        if not any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn)) for op in node.ops):
            continue
        if any(lit in names for side in (node.left, *node.comparators) for lit in _literals(side)):
            found.append((node.lineno, lines[node.lineno - 1].strip()))
    return found


def test_the_scanner_finds_each_kind_of_key_switch():
    names = {"tvm", "onnxruntime"}
    bad = ['if backend == "tvm":\n    pass\n', 'x = spec.backend != "onnxruntime"\n',
           'ok = b in ("tvm", "pynq")\n', 'y = "tvm" not in {backend}\n', 'z = [r for r in rows if r["l"] == "tvm"]\n']
    for src in bad:
        assert key_comparisons(src, names), src
    good = ['lw = get_lowerer("tvm")\n', 'def f():\n    """backend == "tvm" in a docstring"""\n',
            '# if backend == "tvm"\nx = 1\n', 'REG = {"tvm": 1}\n', 'ok = backend in RPC_EXECUTORS\n',
            'same = a.lowering == a.executor\n']
    for src in good:
        assert not key_comparisons(src, names), src


def _registries():
    for n in BUILTIN_LOWERERS:
        get_lowerer(n)
    from edgeuq.lower import LOWERERS

    from edgeuq.compress.steps import COMPRESSION_STEPS

    return {"executor": set(EXECUTORS), "lowerer": set(LOWERERS) | set(BUILTIN_LOWERERS),
            "data source": set(DATA_SOURCES), "compression step": set(COMPRESSION_STEPS)}


@pytest.mark.parametrize("kind", ["executor", "lowerer", "data source", "compression step"])
def test_no_registry_key_comparison_outside_its_plugins(kind):
    names = _registries()[kind]
    assert len(names) >= 3
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" in path.parts or rel.startswith(PLUGINS[kind]):
                continue
            for line, text in key_comparisons(path.read_text(), names):
                if not any(rel == f and snippet in text for f, snippet in NOT_A_KEY):
                    offenders.append(f"{rel}:{line}: {text}")
    assert not offenders, f"{kind} names compared outside the {kind} plug-ins:\n" + "\n".join(offenders)
