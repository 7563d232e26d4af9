"""Fixtures for the runtime tests (graphs built with onnx.helper; see rt_helpers)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgeuq_runtime import write_bundle
from rt_helpers import (C, F, L, BuildFn, Tiny, in_ci, make_graphs, make_head, make_manifest, make_trunk,  # noqa: F401
                        require_extra, tiny_weights)


@pytest.fixture
def build_bundle(tmp_path: Path) -> BuildFn:
    """Factory: build_bundle(name="bundle", trunk_input="signal", **manifest_overrides) -> Tiny."""
    W, V = tiny_weights()

    def build(name: str = "bundle", trunk_input: str = "signal", **overrides: Any) -> Tiny:
        src = tmp_path / f"{name}-src"
        src.mkdir()
        bundle = write_bundle(tmp_path / name, make_manifest(**overrides), make_graphs(src, W, V, trunk_input))
        return Tiny(dir=bundle.root, manifest=bundle.manifest, W=W, V=V)

    return build


@pytest.fixture
def tiny(build_bundle: BuildFn) -> Tiny:
    return build_bundle()


@pytest.fixture
def windows() -> np.ndarray:
    return np.random.default_rng(7).standard_normal((5, L)).astype(np.float32)
