"""The curated public API (edgeuq.__all__) and lazy imports (import circles: tests/test_import_graph.py)."""
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
