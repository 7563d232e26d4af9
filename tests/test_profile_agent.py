"""`edgeuq profile --agent HOST:PORT`: an ONNX Runtime bundle timed stage by stage by the board's
timing agent (`python -m edgeuq_runtime agent`, here in a thread on 127.0.0.1), labelled as such."""
from __future__ import annotations


import pytest
import torch

from edgeuq.bundle import build_bundle
from edgeuq.cli import main
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.profile.report import STAGES, LatencyReport, source_label
from edgeuq.training import save_checkpoint
from edgeuq_runtime.agent import agent_in_thread

TOKEN = "host-side-agent-token-0123456789"
TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))


@pytest.fixture(scope="module")
def ort_bundle(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("agent")
    art = export_onnx(save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), root / "ck", ("a", "b", "c"),
                                      12000.0), root / "onnx")
    return build_bundle(art, root / "bundle", "tiny", "0.1.0", default_samples=4).root


@pytest.fixture
def agent():
    with agent_in_thread(TOKEN) as addr:
        yield addr


def test_profile_over_the_agent_times_every_stage_on_the_board(ort_bundle, agent, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEUQ_AGENT_TOKEN", TOKEN)
    rc = main(["profile", "--bundle", str(ort_bundle), "--agent", agent, "--samples", "1", "4", "--repeats", "8",
               "--warmup", "1", "--no-plots", "--out", str(tmp_path / "r")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "measured: remote (timing agent): agent 127.0.0.1" in out
    rep = LatencyReport.load(tmp_path / "r")
    assert rep.location == "agent" and source_label(rep) == "timing agent (localhost)"
    assert rep.backends == {"trunk": "onnxruntime", "head": "onnxruntime"}  # what TVM RPC cannot time
    assert set(rep.stages["4"]) == set(STAGES) | {"sum of stages"} and set(rep.end_to_end) == {"1", "4"}
    assert all(st["repeats"] == 8 for per in rep.stages.values() for st in per.values())
    assert rep.environment["harness"] == "edgeuq_runtime.harness"


def test_agent_with_a_wrong_token_fails_loudly(ort_bundle, agent, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGEUQ_AGENT_TOKEN", "not-the-agent-token-at-all-000")
    rc = main(["profile", "--bundle", str(ort_bundle), "--agent", agent, "--samples", "1", "--repeats", "2",
               "--no-plots", "--out", str(tmp_path / "r")])
    assert rc != 0
    assert "refused the request (401)" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("pause_s", [0.0, 0.3])
def test_a_tvm_rpc_client_gets_the_key_mismatch_answer_even_when_its_key_arrives_late(agent, pause_s):
    """TVM's client sends the RPC magic, then the key's length and the key, then reads a code. The agent
    must read the whole handshake before it answers: answering after the magic alone and closing with
    the key unread resets the connection, and the client sees a broken pipe, not the answer (a race
    that failed CI once). The pause makes the late key certain; TVM's own server is the reference
    order (magic, key length, key, then the answer)."""
    import socket
    import struct
    import time

    from edgeuq_runtime.tracker import RPC_CODE_MISMATCH, RPC_MAGIC

    host, port = agent.rsplit(":", 1)
    key = b"edgeuq-agent.k:some-matchkey"
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(struct.pack("<i", RPC_MAGIC))
        time.sleep(pause_s)
        s.sendall(struct.pack("<i", len(key)))
        time.sleep(pause_s)
        s.sendall(key)
        answer = s.recv(4, socket.MSG_WAITALL)
        assert len(answer) == 4 and struct.unpack("<i", answer)[0] == RPC_CODE_MISMATCH
        assert s.recv(1) == b""                 # then a clean close (FIN, not a reset)
