"""Per-stage profiling of an ONNX Runtime bundle on this host: the stages timed are the
computation ``predict`` does (same result, bit for bit), the report is labelled "host",
the per-operator tables come from ONNX Runtime's trace, and the board-side command
imports neither torch nor TVM."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeuq.bundle import build_bundle
from edgeuq.cli import main
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.profile.cli import profile_bundle
from edgeuq.profile.report import LatencyReport
from edgeuq.profile.stages import StageProfiler, example_input
from edgeuq.training import save_checkpoint

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("profile-ort")
    art = export_onnx(save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), root / "ck", ("a", "b", "c"),
                                      12000.0), root / "onnx")
    return build_bundle(art, root / "bundle", "tiny", "0.1.0", default_samples=4).root


@pytest.mark.parametrize("samples,batch", [(1, 1), (8, 3)])
def test_composed_stages_equal_predict(ort_bundle, samples, batch):
    prof = StageProfiler(ort_bundle, seed=0)
    x = example_input(prof.rt, batch, seed=3)
    x[0, :40] = 0.0  # a flat stretch: input-quality flags must come through the stages too
    ours = prof.compose_once(x, samples, seed=11)
    ref = prof.rt.predict(x, samples=samples, seed=11)
    np.testing.assert_array_equal(ours.samples, ref.samples)
    np.testing.assert_array_equal(ours.epistemic, ref.epistemic)
    assert ours.input_flags == ref.input_flags
    other = prof.compose_once(x, samples, seed=12)
    assert samples == 1 or not np.array_equal(other.samples, ref.samples)  # the seed reaches the noise


def test_host_report_over_the_cli(ort_bundle, tmp_path, capsys):
    rc = main(["profile", "--bundle", str(ort_bundle), "--samples", "1", "4", "--repeats", "12", "--warmup", "2",
               "--out", str(tmp_path / "p")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "measured: host (native)" in text and "end-to-end (predict)" in text
    rep = LatencyReport.load(tmp_path / "p")
    assert rep.location == "host" and rep.samples == (1, 4) and rep.backends == {"trunk": "onnxruntime",
                                                                                "head": "onnxruntime"}
    for s in ("1", "4"):
        assert set(rep.stages[s]) == {"validate_normalize", "trunk", "noise", "head", "decompose", "sum of stages"}
        assert all(st["repeats"] == 12 for st in rep.stages[s].values())
        # the stages make up one inference: their summed median is the end-to-end median's order of magnitude
        ratio = rep.stages[s]["sum of stages"]["median_ms"] / rep.end_to_end[s]["median_ms"]
        assert 0.25 <= ratio <= 4.0, ratio
    # per-operator tables from ONNX Runtime: every node of the graph, MatMul among them
    import onnx

    head_nodes = {n.name for n in onnx.load(str(ort_bundle / "head.onnx")).graph.node}
    ops = rep.operators["head"]
    assert {"MatMul", "Softmax"} <= {r["op"] for r in ops}
    assert sum(r["share"] for r in ops) == pytest.approx(1.0)
    assert any(r["name"] in head_nodes for r in ops)   # names are the graph's (ORT may fuse some)
    assert "warm-up runs dropped" in rep.operator_sources["head"]
    assert set(rep.plots) == {"stages.png", "latency_vs_samples.png"}


def test_board_side_command_needs_neither_torch_nor_tvm(ort_bundle, tmp_path):
    code = ("import sys; from edgeuq.profile.cli import main; "
            f"rc = main(['--bundle', {str(ort_bundle)!r}, '--samples', '2', '--repeats', '3', '--warmup', '1', "
            f"'--no-plots', '--out', {str(tmp_path / 'b')!r}]); "
            "print('LOADED', 'torch' in sys.modules, 'tvm' in sys.modules); sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LOADED False False" in out.stdout
    assert json.loads((tmp_path / "b" / "latency_report.json").read_text())["meta"]["location"] == "host"


def test_bad_arguments_are_clear_errors(ort_bundle, tmp_path, capsys):
    with pytest.raises(ValueError, match="samples"):
        profile_bundle(ort_bundle, samples=(0,))
    with pytest.raises(ValueError, match="HOST:PORT"):
        profile_bundle(ort_bundle, remote="nohost", samples=(1,))
    assert main(["profile", "--bundle", str(ort_bundle), "--key", "k", "--out", str(tmp_path / "x")]) != 0
    assert "--key goes with --tracker" in capsys.readouterr().err
