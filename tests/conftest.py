"""Shared pytest fixtures (append new fixtures; do not remove others)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def cwru_data_dir() -> Path:
    """CWRU data folder: $EDGEUQ_CWRU_DIR, else <repo>/../shared/data/cwru."""
    env = os.environ.get("EDGEUQ_CWRU_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cwru"


@pytest.fixture(scope="session")
def cwru_dir() -> Path:
    """The CWRU 12k drive-end folder; skips the test when it is absent."""
    root = cwru_data_dir()
    if not (root / "12k_DE").is_dir():
        pytest.skip(f"CWRU data not found at {root} (set EDGEUQ_CWRU_DIR)")
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models train faster on one torch thread (and do not oversubscribe a shared CI box);
    a module opts in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="module")
def _restore_executor_registry():
    """Every test module leaves the runtime's executor registry as it found it (tests register
    toy executors; the built-ins are found by the package scan)."""
    from edgeuq_runtime.executors import EXECUTORS

    saved = dict(EXECUTORS)
    yield
    EXECUTORS.clear()
    EXECUTORS.update(saved)


# Optional extras (tvm, hls4ml): skipped on a developer machine, a FAILURE under CI=true.
# Test modules import the helper as ``from require_extras import require_extra``.
from require_extras import in_ci, require_extra  # noqa: E402,F401
