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


def forbidden_imports(source: str, package: str = "edgeuq_runtime") -> List[str]:
    """Modules under FORBIDDEN that ``source`` imports (statically or via importlib), and relative
    imports that climb out of the top-level package. ``package`` is the dotted package the source
    lives in; a relative import is resolved against it (``from ..x import y`` in
    ``edgeuq_runtime.ota`` is ``edgeuq_runtime.x``; one more dot leaves the package and is reported
    as written, with ``(leaves the package)``)."""
    found = []
    parts = package.split(".")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append(node.module)
        elif isinstance(node, ast.ImportFrom):
            if node.level > len(parts):
                found.append("." * node.level + (node.module or "") + " (leaves the package)")
                continue
            base = ".".join(parts[:len(parts) - node.level + 1])
            targets = [node.module] if node.module else [a.name for a in node.names]
            found += [f"{base}.{t}" for t in targets]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append(node.args[0].value)
    return sorted(m for m in found if m.split(".")[0] in FORBIDDEN or m.endswith("(leaves the package)"))


def _package_of(path: Path, root: Path) -> str:
    """The dotted package a source file under ``root``'s parent lives in."""
    return ".".join(path.parent.relative_to(root.parent).parts)


@pytest.mark.parametrize("snippet", ["import torch", "import torch.nn as nn", "from edgeuq.models import x",
                                     "import importlib\nimportlib.import_module('torch')", "__import__('edgeuq')"])
def test_checker_detects(snippet):
    assert forbidden_imports(snippet)


@pytest.mark.parametrize("snippet", ["import edgeuq_runtime", "from edgeuq_runtime.noise import NoiseSpec",
                                     "from . import torch", "import numpy as np"])
def test_checker_allows(snippet):
    assert not forbidden_imports(snippet)


@pytest.mark.parametrize("snippet, package", [
    ("from .. import edgeuq", "edgeuq_runtime"),                # edgeuq_runtime/x.py: two dots leave it
    ("from ..edgeuq.models import x", "edgeuq_runtime"),
    ("from ...torch import nn", "edgeuq_runtime.ota"),          # edgeuq_runtime/ota/x.py: three dots leave it
    ("from ....edgeuq import x", "edgeuq_runtime.serve.static"),
])
def test_checker_detects_relative_imports_leaving_the_package(snippet, package):
    found = forbidden_imports(snippet, package)
    assert len(found) == 1 and found[0].endswith("(leaves the package)"), found


@pytest.mark.parametrize("snippet, package", [
    ("from ..noise import NoiseSpec", "edgeuq_runtime.ota"),    # edgeuq_runtime.noise: inside
    ("from .. import errors", "edgeuq_runtime.executors"),
    ("from ...errors import InputError", "edgeuq_runtime.serve.static"),
])
def test_checker_allows_relative_imports_inside_the_package(snippet, package):
    assert forbidden_imports(snippet, package) == []


def test_package_of_a_file():
    assert _package_of(PACKAGE / "ota" / "fetchers.py", PACKAGE) == "edgeuq_runtime.ota"
    assert _package_of(PACKAGE / "__init__.py", PACKAGE) == "edgeuq_runtime"


def _sources(root: Path):
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    assert files
    return files


@pytest.mark.parametrize("path", _sources(PACKAGE), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_package_module_is_clean(path):
    assert forbidden_imports(path.read_text(encoding="utf-8"), _package_of(path, PACKAGE)) == []


@pytest.mark.parametrize("path", _sources(TESTS), ids=lambda p: p.name)
def test_test_module_is_clean(path):
    assert forbidden_imports(path.read_text(encoding="utf-8"), _package_of(path, TESTS)) == []


def test_package_has_expected_modules():
    names = {p.relative_to(PACKAGE).as_posix() for p in _sources(PACKAGE)}
    assert {"manifest.py", "bundle.py", "session.py", "executors/__init__.py", "executors/onnxruntime.py"} <= names
