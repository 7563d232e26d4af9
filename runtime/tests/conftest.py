"""Fixtures for the runtime tests (graphs built with onnx.helper; see rt_helpers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeuq_runtime import write_bundle
from rt_helpers import C, F, L, BuildFn, Tiny, in_ci, make_head, make_manifest, make_trunk, require_extra  # noqa: F401


@pytest.fixture
def build_bundle(tmp_path: Path) -> BuildFn:
    """Factory: build_bundle(name="bundle", trunk_input="signal", **manifest_overrides) -> Tiny."""
    rng = np.random.default_rng(1234)
    W = rng.standard_normal((L, F)).astype(np.float32)
    V = rng.standard_normal((F, C)).astype(np.float32)

    def build(name: str = "bundle", trunk_input: str = "signal", **overrides: Any) -> Tiny:
        src = tmp_path / f"{name}-src"
        src.mkdir()
        sources = {"trunk.onnx": make_trunk(src / "trunk.onnx", W, trunk_input),
                   "head.onnx": make_head(src / "head.onnx", V)}
        bundle = write_bundle(tmp_path / name, make_manifest(**overrides), sources)
        return Tiny(dir=bundle.root, manifest=bundle.manifest, W=W, V=V)

    return build


@pytest.fixture
def tiny(build_bundle: BuildFn) -> Tiny:
    return build_bundle()


@pytest.fixture
def windows() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((5, L)).astype(np.float32)
