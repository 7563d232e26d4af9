"""``require_extra(module)``: import an optional extra (tvm, hls4ml, ...) for a test module.

On a developer machine without the extra the test is skipped; under ``CI=true`` (where
``make test`` installs every extra) a missing extra FAILS the test instead of hiding it
as a skip. Use at module level: ``tvm = require_extra("tvm")``.
"""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

__all__ = ["require_extra", "in_ci"]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def require_extra(module: str, extra: str = "") -> ModuleType:
    """The imported ``module``; skip without it, or fail under ``CI=true``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        hint = f" (pip install 'edgeuq[{extra}]'; make test installs it)" if extra else " (make test installs it)"
        msg = f"optional extra {module!r} is not importable: {exc}{hint}"
        if in_ci():
            pytest.fail(f"CI=true: {msg}", pytrace=False)
        pytest.skip(msg, allow_module_level=True)
