"""Placement by measurement on the board's timing agent (`edgeuq compile --agent`): the ONNX Runtime
candidate, which TVM RPC cannot time, is timed on the board like the TVM default, and the faster kept."""
from __future__ import annotations


import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")

from edgeuq.cli import main  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.lower.placement_agent import AgentMeasurer  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime  # noqa: E402
from edgeuq_runtime.agent import agent_in_thread  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]
TOKEN = "placement-agent-token-0123456789"
TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
BOARD = """
name = "test-agent-x86"
description = "x86 box reached only through its timing agent"
targets = ["x86-64"]
memory_mb = 1024
executor = "tvm"

[graphs.trunk]
target = "x86-64"

[graphs.head]
target = "x86-64"
candidates = [{ executor = "onnxruntime", target = "x86-64" }]

[placement]
warmup = 1
repeats = 8

[budgets]
latency_ms = 100.0
weight_bytes = 8000000
mc_samples = 16
"""


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("placement-agent")
    ck = save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), root / "ck", ("a", "b", "c"), 12000.0)
    return export_onnx(ck, root / "onnx")


@pytest.fixture
def board(tmp_path, monkeypatch):
    (tmp_path / "desc" / "boards").mkdir(parents=True)
    (tmp_path / "desc" / "boards" / "test-agent-x86.toml").write_text(BOARD)
    monkeypatch.setenv("EDGEUQ_DESCRIPTORS_DIR", str(tmp_path / "desc"))
    return "test-agent-x86"


@pytest.fixture
def agent():
    with agent_in_thread(TOKEN) as addr:
        yield addr


def test_agent_times_the_onnxruntime_candidate_on_the_board(art, board, agent, tmp_path):
    m = AgentMeasurer(art, agent, TOKEN, 4, warmup=1, repeats=8, rounds=2)
    res = compile_board(board, art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db", measurer=m)
    rec = res.bundle.manifest.sections["placement"]
    assert rec.measured == "remote" and rec.where.startswith(f"timing agent {agent} (")
    head = rec.graphs["head"]
    status = {c.executor: (c.status, c.repeats) for c in head.candidates}
    assert status == {"tvm": ("measured", 8), "onnxruntime": ("measured", 8)}  # 2 rounds x 4 calls each
    assert head.chosen_by == "fastest measured"
    assert head.chosen.median_ms == min(c.median_ms for c in head.candidates)
    assert head.executor == min(head.candidates, key=lambda c: c.median_ms).executor
    UncertaintyRuntime(res.bundle.root).predict(torch.randn(1, 128).numpy(), samples=4, seed=0)


def test_cli_compile_with_agent_and_a_wrong_token(art, board, agent, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEUQ_AGENT_TOKEN", "not-the-token-of-this-agent-00")
    rc = main(["compile", "--board", board, "--onnx", str(art.directory), "--out", str(tmp_path / "b"),
               "--samples", "4", "--tuning-db", str(tmp_path / "db"), "--agent", agent, "--quiet"])
    assert rc == 0  # the bundle is still built: the default kept, each candidate "not measured" with the reason
    rt = UncertaintyRuntime(tmp_path / "b")
    head = rt.manifest.sections["placement"].graphs["head"]
    assert head.chosen_by == "board default"
    assert all(c.status == "not measured" and "401" in c.reason for c in head.candidates)
