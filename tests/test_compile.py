"""`edgeuq compile --board B`: one bundle per board, per-graph placement from the descriptor,
budgets reported, clear errors for missing lowering backends and mismatched executors."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("tvm")

from edgeuq import catalog  # noqa: E402
from edgeuq.cli import main  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower.compile import LoweringNotAvailable, compile_board, weight_bytes  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime, load_bundle  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
BOARD = """name = "{name}"
description = "user board"
targets = ["x86-64"]
memory_mb = 512
executor = "tvm"
[graphs.trunk]
target = "x86-64"
[graphs.head]
target = "x86-64"
{head}
[budgets]
latency_ms = {latency}
weight_bytes = {weights}
mc_samples = 4
"""

@pytest.fixture(autouse=True, scope="module")
def _restore_executor_registry():
    """Leave the runtime's executor registry as found (other tests expect "tvm" unregistered
    until the runtime package registers it itself)."""
    from edgeuq_runtime.executors import EXECUTORS

    saved = dict(EXECUTORS)
    yield
    EXECUTORS.clear()
    EXECUTORS.update(saved)



@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-compile")
    m = SignalTransformer(ModelConfig(**TINY)).eval()
    ck = save_checkpoint(m, root / "ck", ("a", "b", "c"), 12000.0)
    return ck, export_onnx(ck, root / "onnx")


@pytest.fixture
def user_board(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path / "desc"))
    (tmp_path / "desc" / "boards").mkdir(parents=True)

    def write(name, head="", latency=1000.0, weights=10**9):
        (tmp_path / "desc" / "boards" / f"{name}.toml").write_text(
            BOARD.format(name=name, head=head, latency=latency, weights=weights))
        return name

    return write


def test_cli_compiles_x86_host_from_checkpoint(tiny, tmp_path, capsys):
    ck, _ = tiny
    out = tmp_path / "bundle"
    rc = main(["compile", "--board", "x86-host", "--checkpoint", str(ck.directory), "--out", str(out),
               "--samples", "4", "--json", str(tmp_path / "r.json"), "--quiet", "--tuning-db", str(tmp_path / "db")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "board x86-host" in text and "latency_ms" in text and "budgets met" in text
    m = load_bundle(out).manifest
    assert (m.trunk.backend, m.head.backend, m.backend) == ("tvm", "tvm", "tvm")
    assert m.metadata["board"] == "x86-host" and m.metadata["targets"]["head"]["target"] == "x86-64"
    lowered = m.metadata["lowering"]["tvm:x86-64"]
    assert lowered["compilers"]["tvm"].startswith("0.27") and lowered["tuning"] == "untuned"
    assert lowered["check"]["method"] == "native"
    report = json.loads((tmp_path / "r.json").read_text())["report"]
    assert report["latency_ms"]["measured"] > 0 and report["mc_samples"] == {"used": 4, "budget": 16, "ok": True}
    r = UncertaintyRuntime(out, seed=0).predict(torch.randn(2, 128).numpy())
    assert r.samples.shape == (4, 2, 3)


def test_budgets_not_met_are_reported(tiny, tmp_path, user_board):
    _, art = tiny
    res = compile_board(user_board("b-tight", latency=1e-6, weights=10), art, tmp_path / "b", samples=8,
                        tuning_root=tmp_path / "db")
    assert res.report["weight_bytes"] == {"measured": weight_bytes(art), "budget": 10, "ok": False}
    assert res.report["latency_ms"]["ok"] is False and res.report["mc_samples"]["ok"] is False
    assert res.report["ok"] is False


def test_unregistered_lowering_is_a_clear_error(tiny, tmp_path, user_board):
    _, art = tiny
    name = user_board("b-nope", head='lowering = "no-such-backend"\nexecutor = "tvm"')
    with pytest.raises(LoweringNotAvailable, match="needs lowering backend 'no-such-backend' for graphs \\['head'\\]"):
        compile_board(name, art, tmp_path / "b")


def test_executor_mismatch_is_a_clear_error(tiny, tmp_path, user_board):
    _, art = tiny
    name = user_board("b-mismatch", head='lowering = "tvm"\nexecutor = "onnxruntime"')
    with pytest.raises(ValueError, match="produced the head graph for executor 'tvm'.*declares 'onnxruntime'"):
        compile_board(name, art, tmp_path / "b")


def test_onnxruntime_passthrough_and_mixed_placement(tiny, tmp_path, user_board):
    """Trunk on TVM, head as plain ONNX for onnxruntime: one bundle, two executors."""
    _, art = tiny
    name = user_board("b-mixed", head='executor = "onnxruntime"')
    res = compile_board(name, art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db")
    m = res.bundle.manifest
    assert (m.trunk.file, m.trunk.backend, m.head.file, m.head.backend) == ("trunk.so", "tvm", "head.onnx",
                                                                          "onnxruntime")
    assert res.report["latency_ms"]["measured"] > 0
    assert UncertaintyRuntime(m and res.bundle.root, seed=1).predict(torch.randn(1, 128).numpy()).samples.shape == \
        (4, 1, 3)


def test_unknown_board_lists_boards(tiny, tmp_path, capsys):
    _, art = tiny
    rc = main(["compile", "--board", "no-such-board", "--onnx", str(art.directory), "--out", str(tmp_path / "b")])
    assert rc == 2 and "no-such-board" in capsys.readouterr().err


@pytest.mark.slow
def test_fpga_board_trunk_on_tvm_head_on_hls4ml(tmp_path):
    """pynq-z2: trunk lowered by TVM for the Cortex-A9, head by hls4ml for the xc7z020, one bundle."""
    pytest.importorskip("hls4ml")
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(**{**TINY, "stochastic_blocks": ()})).eval()   # head-only stochastic split
    art = export_onnx(save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0), tmp_path / "onnx")
    res = compile_board("pynq-z2", art, tmp_path / "b")
    m = res.bundle.manifest
    assert (m.trunk.backend, m.head.backend) == ("tvm", "pynq") and m.trunk.file == "trunk.so"
    assert res.bundle.path(m.trunk.file).read_bytes()[18] == 40          # EM_ARM: the Cortex-A9 library
    assert set(m.metadata["lowering"]) == {"tvm:cortex-a9", "hls4ml:xc7z020"}
    assert res.report["latency_ms"]["measured"] is None and "not measured" in res.report["latency_ms"]["how"]


def test_fpga_head_takes_precisions_from_a_quant_plan(tmp_path):
    """`--quant-plan`: the plan's head precisions become the hls4ml head's per-layer types."""
    pytest.importorskip("hls4ml")
    from edgeuq.lower.compile import lowering_options

    plan = {"fc1": "ap_fixed<14,6>", "fc2": "ap_fixed<18,8>"}
    assert lowering_options("hls4ml", ["head"], 0, 4, None, print, plan) == {"precision": plan}
    assert lowering_options("hls4ml", ["head"], 0, 4, None, print, None) == {}
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(**{**TINY, "stochastic_blocks": ()})).eval()
    art = export_onnx(save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0), tmp_path / "onnx")
    res = compile_board("pynq-z2", art, tmp_path / "b", fpga_precision=plan)
    meta = res.bundle.manifest.metadata["lowering"]["hls4ml:xc7z020"]
    assert meta["precision_plan"] == plan
    assert "14,6" in json.dumps(meta["precision"]) and "18,8" in json.dumps(meta["precision"])
