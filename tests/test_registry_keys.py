"""No code outside a plug-in compares a registry key (issue 20): executor, lowerer and data-source
names are looked up in their registry, and callers read a declared capability (a data source's
``native_rates``, a profiler table keyed by executor, ``rpc_timeable``) instead of
``if backend == "tvm"``. Schemes have their own scanner (tests/test_schemes_registry.py).

The scanner reads the AST (comments and docstrings never count) and flags a comparison
(``==``, ``!=``, ``in``, ``not in``) with a registered name as a string literal, alone or inside
a tuple/list/set literal. Plug-ins themselves (the executor modules, the lowerers,
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


# -- tables keyed by registry names ---------------------------------------------------------------
# A closed table keyed by scheme names outside the scheme plug-ins (``TEXT_HEADS.add("laplace", ...)``,
# ``{"mc_dropout": ..., "laplace": ...}``, ``T["hsa"] = ...``) is a capability that belongs to the
# scheme: a new scheme would have to edit it. The scanner reads the AST and reports every dict-literal
# key, subscript-assignment key and first argument of ``.add``/``.register``/``.setdefault`` that is a
# scheme name, with the table it belongs to (the assigned name, else the enclosing function).

#: where the scheme plug-ins live (they may name their own key)
SCHEME_PLUGINS = ("edgeuq/schemes/",)
#: (file, table, key) -> why it is not a per-scheme table
NOT_A_SCHEME_TABLE = {
    ("edgeuq/benchmark/settings.py", "_variants", "*"):
        "the benchmark's compared variants (which configurations it runs, incl. mc_dropout_attn): data, "
        "not a property of a scheme",
    ("bench/uq_benchmark.py", "DISPLAY", "*"): "README labels of the benchmark's variants; an unlisted one is shown by name",
    ("bench/text_teacher.py", "HEAD_LABELS", "*"): "README labels of result rows; an unlisted one is shown by name",
    ("bench/text_teacher.py", "HEAD_NAMES", "*"): "README labels of heads; an unlisted one is shown by name",
    ("edgeuq/benchmark/runner.py", "info", "laplace"): "the fitted posterior's metrics record (POSTERIOR_METRIC)",
    ("edgeuq/text/distill.py", "metrics", "laplace"): "the fitted posterior's metrics record (POSTERIOR_METRIC)",
    ("edgeuq/text/pipeline.py", "to_meta", "laplace"): "the TextTeacher artifact's field `laplace`",
    ("bench/text_teacher.py", "results", "laplace"): "the fitted posterior's record in results.json",
    ("bench/text_teacher.py", "_student_rest", "laplace"): "the fitted posterior's record in results.json",
    ("bench/text_student_cut.py", "results", "laplace"): "the fitted posterior's record in results.json",
}


def _owner(parents: dict, node: ast.AST) -> str:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Assign) and node.targets and isinstance(node.targets[0], ast.Name):
            return node.targets[0].id
        if isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            return node.target.id
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return node.name
    return "<module>"


def keyed_tables(source: str, names: Set[str]) -> List[Tuple[int, str, str, str]]:
    """(line, source text, table, key) of every table entry keyed by a registered name."""
    tree = ast.parse(source)
    lines = source.splitlines()
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            keys = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            keys = [node.slice]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("add", "register", "setdefault") and node.args):
            keys = [node.args[0]]
        else:
            continue
        for k in keys:
            if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value in names:
                found.append((k.lineno, lines[k.lineno - 1].strip(), _owner(parents, node), k.value))
    return found


def test_the_table_scanner_finds_each_kind_of_scheme_keyed_table():
    names = {"mc_dropout", "laplace"}
    bad = ['HEADS.add("laplace", Head())\n', 'T = {"mc_dropout": 1}\n', 'T["laplace"] = 2\n',
           'def f():\n    return {"x": 1, "laplace": 2}\n', 'REG.register("mc_dropout")(cls)\n']
    for src in bad:
        assert keyed_tables(src, names), src
    good = ['get_scheme("laplace")\n', 'T = {scheme: 1 for scheme in SCHEMES}\n', 'x = t["laplace"]\n',
            '"""{"laplace": 1} in a docstring"""\n', 'cfg = dict(scheme="laplace")\n']
    for src in good:
        assert not keyed_tables(src, names), src
    assert keyed_tables('T = {"laplace": 1}\n', names)[0][2:] == ("T", "laplace")


def test_no_table_keyed_by_scheme_names_outside_the_scheme_plugins():
    """e.g. the text heads are ``Scheme.text_head``, declared in each scheme's own module."""
    from edgeuq.schemes import SCHEMES

    names = set(SCHEMES)
    assert {"mc_dropout", "laplace", "hsa"} <= names
    offenders, used = [], set()
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if "__pycache__" in path.parts or rel.startswith(SCHEME_PLUGINS):
                continue
            for line, text, table, key in keyed_tables(path.read_text(), names):
                allowed = next((a for a in ((rel, table, key), (rel, table, "*")) if a in NOT_A_SCHEME_TABLE), None)
                if allowed is None:
                    offenders.append(f"{rel}:{line}: {text}  (table {table})")
                used.add(allowed)
    assert not offenders, "tables keyed by scheme names outside edgeuq/schemes/:\n" + "\n".join(offenders)
    stale = set(NOT_A_SCHEME_TABLE) - used
    assert not stale, f"allow-list entries that match nothing (remove them): {sorted(stale)}"
