"""The device runtime must never import torch or the host package ``edgeuq`` (tests included)."""
from __future__ import annotations

import ast
from pathlib import Path
from typing import List

import pytest

import edgeuq_runtime

FORBIDDEN = {"torch", "edgeuq"}
PACKAGE = Path(edgeuq_runtime.__file__).parent
TESTS = Path(__file__).parent


def forbidden_imports(source: str) -> List[str]:
    """Top-level module names from FORBIDDEN imported by ``source`` (statically or via importlib)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return sorted(m for m in found if m.split(".")[0] in FORBIDDEN)


@pytest.mark.parametrize("snippet", ["import torch", "import torch.nn as nn", "from edgeuq.models import x",
                                     "import importlib\nimportlib.import_module('torch')", "__import__('edgeuq')"])
def test_checker_detects(snippet):
    assert forbidden_imports(snippet)


@pytest.mark.parametrize("snippet", ["import edgeuq_runtime", "from edgeuq_runtime.noise import NoiseSpec",
                                     "from . import torch", "import numpy as np"])
def test_checker_allows(snippet):
    assert not forbidden_imports(snippet)


def _sources(root: Path):
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    assert files
    return files


@pytest.mark.parametrize("path", _sources(PACKAGE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_package_module_is_clean(path):
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("path", _sources(TESTS), ids=lambda p: p.name)
def test_test_module_is_clean(path):
    assert forbidden_imports(path.read_text(encoding="utf-8")) == []


def test_package_has_expected_modules():
    names = {p.relative_to(PACKAGE).as_posix() for p in _sources(PACKAGE)}
    assert {"manifest.py", "bundle.py", "session.py", "executors/__init__.py", "executors/onnxruntime.py"} <= names
