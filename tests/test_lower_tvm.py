"""TVM lowering on x86 (native): numerics vs ONNX Runtime, tuning database saved and reused,
fixed-batch tuned libraries, and the end-to-end runtime on a TVM bundle."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("tvm")

from edgeuq.bundle import build_bundle  # noqa: E402
from edgeuq.catalog import get_target  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower import LOWERERS, lower  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.lower.tvm import TvmNumericsError, graph_io  # noqa: E402
from edgeuq.lower.tvm_check import check_artifact  # noqa: E402
from edgeuq.lower.tvm_tune import database_size  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))

@pytest.fixture(autouse=True, scope="module")
def _restore_executor_registry():
    """Leave the runtime's executor registry as found (other tests expect "tvm" unregistered
    until the runtime package registers it itself)."""
    from edgeuq_runtime.executors import EXECUTORS

    saved = dict(EXECUTORS)
    yield
    EXECUTORS.clear()
    EXECUTORS.update(saved)



def export_tiny(root, seed=0):
    torch.manual_seed(seed)
    m = SignalTransformer(ModelConfig(**TINY)).eval()
    return export_onnx(save_checkpoint(m, root / "ck", ("a", "b", "c"), 12000.0), root / "onnx")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return export_tiny(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def x86(art, tmp_path_factory):
    return lower("tvm", art, get_target("x86-64"), tmp_path_factory.mktemp("x86"), samples=4,
                 tuning_root=tmp_path_factory.mktemp("no-db"))


def test_registered():
    assert "tvm" in LOWERERS


def test_x86_untuned_is_dynamic_and_matches_onnxruntime(x86):
    md = x86.metadata
    assert md["check"]["method"] == "native" and md["tuning"] == "untuned"
    for role in ("trunk", "head"):
        assert md["check"]["max_abs_err"][role] <= md["check"]["tolerance"][role] < 1e-2
        assert getattr(x86, role).backend == "tvm" and getattr(x86, role).options["batch"] is None
        assert md["graphs"][role]["bytes"] > 10_000
    assert md["check"]["latency_ms"]["per_input"] > 0
    assert md["compilers"]["tvm"].startswith("0.27") and "g++" in md["compilers"]["cxx"]["version"]


def test_graph_io_reads_names_and_shapes(art):
    inputs, outputs = graph_io(art.head_path)
    assert [n for n, _, _ in inputs] == [art.feature_name, *[s.name for s in art.noise]]
    assert inputs[0][2] == art.feature_shape and outputs == [art.logits_name]


def test_numerics_check_can_fail(art, x86, tmp_path):
    """A head compiled from other weights is caught by the comparison with ONNX Runtime."""
    other = lower("tvm", export_tiny(tmp_path, seed=1), get_target("x86-64"), tmp_path / "o", check="none",
                  graphs=["head"])
    from edgeuq.lower.tvm import GraphBuild

    wrong = GraphBuild("head", other.head.file, dict(other.head.options), None, {}, None, 0.0)
    with pytest.raises(TvmNumericsError, match="differs from ONNX Runtime"):
        check_artifact(art, get_target("x86-64"), {"head": wrong})


def test_runtime_on_tvm_bundle_matches_onnxruntime_bundle(art, tmp_path):
    """UncertaintyRuntime unchanged on a bundle whose graphs say backend "tvm"."""
    res = compile_board("x86-host", art, tmp_path / "tvm", samples=8, tuning_root=tmp_path / "db")
    assert res.bundle.manifest.trunk.backend == "tvm" and res.bundle.manifest.head.file == "head.so"
    ort = build_bundle(art, tmp_path / "ort", "tiny", "1.0.0", default_samples=8)
    x = np.random.default_rng(5).standard_normal((6, 128)).astype(np.float32)
    a = UncertaintyRuntime(res.bundle.root, seed=11).predict(x)
    b = UncertaintyRuntime(ort.root, seed=11).predict(x)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(a.epistemic, b.epistemic, rtol=1e-3, atol=1e-5)
    assert (a.prediction == b.prediction).all()
    assert res.report["latency_ms"]["measured"] > 0 and res.report["weight_bytes"]["measured"] > 1000


@pytest.mark.slow
def test_tuning_database_saved_reused_and_fixed_batch(art, tmp_path):
    """--tune N writes a per-target database; a later compile without --tune reuses it
    (fixed batch: trunk 1 window, head S rows), and the results still match."""
    db_root, target = tmp_path / "db", get_target("x86-64")
    tuned = lower("tvm", art, target, tmp_path / "t1", tune_trials=8, samples=4, tuning_root=db_root)
    assert tuned.metadata["tuning"] == "tuned"
    assert database_size(db_root / "x86-64") > 0
    assert tuned.trunk.options["batch"] == 1 and tuned.head.options["batch"] == 4
    reused = lower("tvm", art, target, tmp_path / "t2", samples=4, tuning_root=db_root)
    assert reused.metadata["tuning"] == "reused" and reused.trunk.options["batch"] == 1
    for res in (tuned, reused):
        assert max(res.metadata["check"]["max_abs_err"].values()) < 1e-3
    fresh = lower("tvm", art, target, tmp_path / "t3", samples=4, tuning_root=tmp_path / "empty", check="none")
    assert fresh.metadata["tuning"] == "untuned" and fresh.trunk.options["batch"] is None


def test_fpga_target_is_refused(art, tmp_path):
    with pytest.raises(ValueError, match="FPGA targets are lowered by hls4ml"):
        lower("tvm", art, get_target("xc7z020"), tmp_path)


def test_unknown_option_is_refused(art, tmp_path):
    with pytest.raises(TypeError, match="unknown tvm lowering options"):
        lower("tvm", art, get_target("x86-64"), tmp_path, colour="red")


def test_tuning_skipped_for_cross_targets(art, tmp_path):
    res = lower("tvm", art, get_target("cortex-a72"), tmp_path, tune_trials=8, check="none", graphs=["head"])
    assert res.metadata["tuning"] == "untuned" and "tuning skipped" in res.metadata["notes"][0]
    assert res.trunk.backend == "onnxruntime"          # not compiled: passed through as ONNX
    assert dataclasses.replace(get_target("cortex-a72")).cross_compiler == "aarch64-linux-gnu-g++"
