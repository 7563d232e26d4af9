"""Placement measured on a board skips candidates the board's CPU cannot run: the timing agent
reports its machine and /proc/cpuinfo flags (``/v1/health``), a TVM RPC server the CPU its LLVM
names; a library for another architecture or needing a flag the board lacks is excluded, named
in the placement evidence, and never sent or timed. Where the board does not say, such a
candidate is "not measured". The fake agent is the real AgentServer with its flags reader
replaced by an AVX2-only CPU."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")

import edgeuq_runtime.agent as agent_mod  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.hostcpu import X86_ISA_FLAGS  # noqa: E402
from edgeuq.lower.base import CompiledGraph  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.lower.placement import Option, RemoteMeasurer, choose, isa_exclusion  # noqa: E402
from edgeuq.lower.placement_agent import AgentMeasurer  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime.agent import AgentServer  # noqa: E402
from edgeuq_runtime.cpuinfo import cpu_flags  # noqa: E402

TOKEN = "placement-isa-token-0123456789ab"
#: an AVX2 machine (Haswell-class): x86-64-v3 and below, no AVX-512
AVX2_ONLY = frozenset({"fpu", "sse", "sse2", "pni", "ssse3", "sse4_1", "sse4_2", "popcnt"}) | X86_ISA_FLAGS["x86-64-v3"]
AVX512_MISSING = sorted(X86_ISA_FLAGS["x86-64-v4"] - X86_ISA_FLAGS["x86-64-v3"])  # what the board lacks


def _option(executor, target, default=False):
    """A candidate whose library was never built: an excluded one must never be sent or timed."""
    return Option(executor, target, executor, default, graph=CompiledGraph(Path("/nonexistent/lib.so"), executor),
                  check="compiled", native=True)


@pytest.fixture
def fake_agent(monkeypatch):
    """The real agent on 127.0.0.1, reporting the CPU set in ``state`` (flags, machine)."""
    state = {"flags": AVX2_ONLY, "machine": "x86_64", "profiles": 0, "vendor": "amd"}
    monkeypatch.setattr(agent_mod, "board_cpu_flags", lambda: state["flags"])
    monkeypatch.setattr(agent_mod, "board_cpu_vendor", lambda: state["vendor"])
    monkeypatch.setattr(agent_mod.platform, "machine", lambda: state["machine"])
    real = agent_mod.profile_bundle_bytes

    def counted(*a, **k):
        state["profiles"] += 1
        return real(*a, **k)

    monkeypatch.setattr(agent_mod, "profile_bundle_bytes", counted)
    srv = AgentServer(("127.0.0.1", 0), TOKEN)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    state["address"] = f"127.0.0.1:{srv.server_address[1]}"
    yield state
    srv.shutdown()
    srv.server_close()
    t.join(timeout=10)


def test_agent_reports_the_board_cpu_and_avx512_is_excluded(fake_agent):
    m = AgentMeasurer(None, fake_agent["address"], TOKEN, 4)
    board = m.board_cpu()
    assert board.machine == "x86_64" and board.flags == AVX2_ONLY and "/v1/health" in board.source
    why = m.exclusion(_option("tvm", "x86-64-avx512"))
    assert why is not None and f"needs CPU flags {', '.join(AVX512_MISSING)}, which the board's CPU lacks" in why
    assert m.exclusion(_option("tvm", "x86-64-avx2")) is None       # x86-64-v3: all on the board
    assert m.exclusion(_option("tvm", "x86-64")) is None
    assert m.exclusion(_option("onnxruntime", "x86-64-avx512")) is None  # an ONNX graph: ORT dispatches per CPU


@pytest.mark.parametrize("vendor", ["amd", None])
def test_the_board_vendor_the_agent_reports_picks_the_tvm_tuning_copy(fake_agent, vendor):
    """``--cpu-vendor auto`` with ``--agent``: the vendor in the agent's ``/v1/health`` (read from the
    board's /proc/cpuinfo) is the one TVM builds take, whatever this host's is; an agent that reports
    none leaves the lowering's own choice (None), and the console says which."""
    from edgeuq.lower.cli import _agent_vendor

    fake_agent["vendor"] = vendor
    board = AgentMeasurer(None, fake_agent["address"], TOKEN, 4).board_cpu()
    assert board.vendor == vendor
    said = []
    assert _agent_vendor(board, said.append) == vendor
    assert len(said) == 1 and (f"board CPU vendor: {vendor}" if vendor else "not reported") in said[0]


def test_choose_records_the_skip_and_never_times_it(fake_agent):
    m = AgentMeasurer(None, fake_agent["address"], TOKEN, 4)
    opts = [_option("tvm", "x86-64", default=True), _option("tvm", "x86-64-avx512")]
    rec = choose("head", opts, m, {})
    skipped = next(c for c in rec.candidates if c.target == "x86-64-avx512")
    assert skipped.status == "excluded" and "avx512f" in skipped.reason and skipped.median_ms is None
    assert rec.chosen_by == "board default" and rec.target == "x86-64"
    assert fake_agent["profiles"] == 0  # one usable candidate: nothing sent


def test_another_architecture_is_excluded(fake_agent):
    fake_agent["machine"] = "aarch64"
    m = AgentMeasurer(None, fake_agent["address"], TOKEN, 4)
    why = m.exclusion(_option("tvm", "x86-64"))
    assert why is not None and "is x86_64 code and the board's CPU is aarch64" in why
    assert m.exclusion(_option("tvm", "cortex-a72")) is None
    assert m.exclusion(_option("onnxruntime", "x86-64")) is None


def test_unknown_flags_make_an_isa_bound_candidate_not_measured(fake_agent):
    fake_agent["flags"] = None  # an agent that cannot read /proc/cpuinfo
    m = AgentMeasurer(None, fake_agent["address"], TOKEN, 4)
    assert m.exclusion(_option("tvm", "x86-64-avx512")) is None  # not excluded on a guess ...
    out = m.measure("head", [_option("tvm", "x86-64-avx512")], {})
    reason = out[("tvm", "x86-64-avx512", "tvm")]
    assert reason.startswith("not measured:") and "did not say which it has" in reason  # ... and not timed
    assert fake_agent["profiles"] == 0


class FakeSession:
    """A TVM RPC session whose server's LLVM names ``cpu`` (None: a runtime-only TVM, no LLVM)."""

    def __init__(self, cpu, triple="x86_64-pc-linux-gnu"):
        self.funcs = {} if cpu is None else {"tvm.codegen.llvm.GetHostCPUName": lambda: cpu,
                                             "tvm.codegen.llvm.GetProcessTriple": lambda: triple}

    def get_function(self, name):
        if name not in self.funcs:
            raise AttributeError(f"Module has no function '{name}'")
        return self.funcs[name]


def test_rpc_board_named_haswell_excludes_avx512():
    m = RemoteMeasurer(FakeSession("haswell"), "rpc fake")
    assert m.board_cpu().machine == "x86_64" and "LLVM CPU haswell" in m.board_cpu().source
    why = m.exclusion(_option("tvm", "x86-64-avx512"))
    assert why is not None and f"needs CPU flags {', '.join(AVX512_MISSING)}" in why
    assert m.exclusion(_option("tvm", "x86-64-avx2")) is None
    sky = RemoteMeasurer(FakeSession("skylake-avx512"), "rpc fake")
    assert sky.exclusion(_option("tvm", "x86-64-avx512")) is None


def test_rpc_board_without_llvm_leaves_isa_bound_candidates_not_measured():
    m = RemoteMeasurer(FakeSession(None), "rpc fake")
    assert m.board_cpu().flags is None and m.exclusion(_option("tvm", "x86-64-avx2")) is None
    out = m.measure("head", [_option("tvm", "x86-64-avx2")], {"x": torch.zeros(2, 3).numpy()})
    assert "did not say which it has" in out[("tvm", "x86-64-avx2", "tvm")]


def test_isa_exclusion_against_the_isa_levels():
    """Independent reference: a board at ISA level L runs exactly the targets at or below L."""
    from edgeuq.lower.placement import BoardCpu

    levels = {"x86-64": "x86-64", "x86-64-v3": "x86-64-avx2", "x86-64-v4": "x86-64-avx512"}
    order = list(levels)
    for i, board_level in enumerate(order):
        board = BoardCpu("x86_64", X86_ISA_FLAGS[board_level], "test")
        for j, target_level in enumerate(order):
            why = isa_exclusion(_option("tvm", levels[target_level]), board)
            assert (why is None) == (j <= i), (board_level, target_level, why)


def test_cpuinfo_reader(tmp_path):
    p = tmp_path / "cpuinfo"
    p.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(p) == frozenset({"fpu", "avx2", "fma"})
    p.write_text("processor\t: 0\nFeatures\t: fp asimd evtstrm\n")
    assert cpu_flags(p) == frozenset({"fp", "asimd", "evtstrm"})
    p.write_text("processor\t: 0\n")
    assert cpu_flags(p) is None
    assert cpu_flags(tmp_path / "absent") is None


BOARD = """
name = "test-isa-agent-x86"
description = "x86 box with AVX2 only, reached through its timing agent"
targets = ["x86-64", "x86-64-avx512"]
memory_mb = 1024
executor = "tvm"
graphs.trunk.target = "x86-64"
graphs.head.target = "x86-64"
graphs.head.candidates = [{ executor = "onnxruntime", target = "x86-64" }, { executor = "tvm", target = "x86-64-avx512" }]
placement = { warmup = 1, repeats = 4 }
budgets = { latency_ms = 100.0, weight_bytes = 8000000, mc_samples = 16 }
"""


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_compile_on_an_avx2_agent_skips_the_avx512_library(fake_agent, tmp_path, monkeypatch):
    """End to end: the board lacks AVX-512, so the AVX-512 TVM head is excluded for that reason in the
    bundle's placement section, whether or not this host could lower and check it (on an AVX2 host,
    or with EDGEUQ_HOST_ISA below AVX-512, its lowering fails first); the other two are timed there."""
    torch.manual_seed(0)
    ck = save_checkpoint(SignalTransformer(ModelConfig(input_length=128, num_classes=3, patch=16, d_model=16,
                                                       heads=2, depth=2, ffn=16, stochastic_blocks=(1,))).eval(),
                         tmp_path / "ck", ("a", "b", "c"), 12000.0)
    art = export_onnx(ck, tmp_path / "onnx")
    (tmp_path / "desc" / "boards").mkdir(parents=True)
    (tmp_path / "desc" / "boards" / "test-isa-agent-x86.toml").write_text(BOARD)
    monkeypatch.setenv("EDGEUQ_DESCRIPTORS_DIR", str(tmp_path / "desc"))
    m = AgentMeasurer(art, fake_agent["address"], TOKEN, 4, warmup=1, repeats=4, rounds=2)
    res = compile_board("test-isa-agent-x86", art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db",
                        measurer=m)
    head = res.bundle.manifest.sections["placement"].graphs["head"]
    status = {(c.executor, c.target): c.status for c in head.candidates}
    assert status == {("tvm", "x86-64"): "measured", ("onnxruntime", "x86-64"): "measured",
                      ("tvm", "x86-64-avx512"): "excluded"}, status
    skipped = next(c for c in head.candidates if c.target == "x86-64-avx512")
    assert "avx512f" in skipped.reason and "timing agent" in skipped.reason
    assert head.chosen_by == "fastest measured" and head.target == "x86-64"
    assert fake_agent["profiles"] == 2 * 2  # two timed candidates x two rounds; the excluded one never sent


def test_a_real_rpc_server_names_this_cpu():
    """Against a real TVM RPC server on this machine: the machine is this one's, and the flags LLVM
    derives for the CPU it names reach the same x86 ISA levels as this host's /proc/cpuinfo."""
    import platform

    from tvm import rpc

    from edgeuq.profile.tvm_rpc import connect, rpc_board_cpu

    host = cpu_flags()
    if platform.machine() != "x86_64" or host is None:
        pytest.skip("needs an x86-64 Linux host to compare ISA levels with /proc/cpuinfo")
    srv = rpc.Server("127.0.0.1", port=19400, port_end=19600)
    try:
        session, _ = connect(remote=f"127.0.0.1:{srv.port}")
        machine, flags, source = rpc_board_cpu(session)
    finally:
        srv.terminate()
    assert machine == "x86_64" and "LLVM CPU" in source
    assert flags is not None
    for level, need in X86_ISA_FLAGS.items():
        assert (need <= flags) == (need <= host), (level, sorted(need - flags), sorted(need - host), source)
