"""A compressed student is a first-class bundle: a pruned model whose only stochastic part is
its head compiles for a CPU board (TVM) and for an FPGA board, where that head becomes the
hls4ml IP (C simulation checked) and the trunk runs on the board's CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")
require_extra("hls4ml", "fpga")

from edgeuq.compress.masks import LayerMasks  # noqa: E402
from edgeuq.compress.slicing import prune_physically  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower import Evidence  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.models import ModelConfig, build_model  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime, load_bundle  # noqa: E402
from edgeuq_runtime.preprocess import zscore_windows  # noqa: E402

KEPT_HEADS = (np.array([1.0, 0.0, 1.0, 1.0]), np.array([0.0, 1.0, 0.0, 0.0]))


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    cfg = ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16, heads=4, depth=2, ffn=24,
                      dropout=0.2, stochastic_blocks=(), stochastic_head=True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the logits like a trained head's
        model.head.fc2.weight.mul_(12.0)
    rng = np.random.default_rng(0)
    neurons = tuple((rng.random(24) < 0.5).astype(float) for _ in range(2))
    pruned = prune_physically(model, LayerMasks(KEPT_HEADS, neurons)).eval()
    assert [(b.heads, b.ffn) for b in pruned.cfg.blocks] == [(3, int(neurons[0].sum())), (1, int(neurons[1].sum()))]
    root = tmp_path_factory.mktemp("student")
    ck = save_checkpoint(pruned, root / "ck", ("normal", "inner", "outer"), 12000.0)
    return pruned, export_onnx(ck, root / "onnx")


def _x(n=6):
    return zscore_windows(np.random.default_rng(3).standard_normal((n, 128)).astype(np.float32))


def test_pruned_student_compiles_for_the_cpu_board_and_runs_like_pytorch(student, tmp_path):
    model, art = student
    res = compile_board("x86-host", art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db",
                        placement="default", isa_variants=())
    m = load_bundle(res.bundle.root).manifest
    assert (m.trunk.backend, m.head.backend) == ("tvm", "tvm")
    ev = Evidence.from_json(m.metadata["lowering"]["tvm:x86-64"]["evidence"])
    assert ev.how == "native" and ev.max_error <= ev.tolerance
    x = _x()
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(x)), -1).numpy()
    got = UncertaintyRuntime(res.bundle.root, threads=1).deterministic(x).probs
    assert np.abs(got - want).max() <= 1e-4


def test_pruned_student_head_goes_to_the_fpga_with_c_simulation_evidence(student, tmp_path):
    model, art = student
    res = compile_board("pynq-z2", art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db")
    m = load_bundle(res.bundle.root).manifest
    assert m.head.backend == "pynq" and m.trunk.backend == "tvm"
    hls = [v for k, v in m.metadata["lowering"].items() if k.startswith("hls4ml:")]
    assert len(hls) == 1
    ev = Evidence.from_json(hls[0]["evidence"])
    assert ev.how == "c-simulation" and ev.max_error is not None and ev.max_error <= ev.tolerance
    assert ev.latency_ms is None  # simulated: never a board latency
    fit = ev.estimates["fpga_resources"]  # the resource fit is an estimate, labelled so
    assert isinstance(fit["fits"], bool) and "estimate" in str(fit).lower()
    # the head's noise inputs follow the pruned student's widths (d_model stays 16)
    assert [(s.name, s.shape) for s in m.noise] == [("head_in", (16,)), ("head_hidden", (16,))]
