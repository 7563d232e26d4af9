"""TVM bundles profiled over a real TVM RPC server on 127.0.0.1 (directly and through a
tracker), and per-kernel tables of TVM libraries on this host."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")

from tvm import rpc  # noqa: E402

from edgeuq.cli import main  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.profile.cli import profile_bundle  # noqa: E402
from edgeuq.profile.report import LatencyReport  # noqa: E402
from edgeuq.profile.tvm_rpc import connect, graph_inputs, profile_remote, tvm_kernel_table  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime.bundle import load_bundle  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))


@pytest.fixture(scope="module")
def tvm_bundle(tmp_path_factory):
    """A tiny model compiled for the x86-host board (TVM libraries for trunk and head)."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("profile-tvm")
    art = export_onnx(save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), root / "ck", ("a", "b", "c"),
                                      12000.0), root / "onnx")
    # one per-ISA variant (AVX2): remote profiling uploads the library the board's CPU would run
    res = compile_board("x86-host", art, root / "bundle", samples=4, tuning_root=root / "db", placement="default",
                        isa_variants=("x86-64-avx2",))
    return res.bundle.root


@pytest.fixture(scope="module")
def server():
    srv = rpc.Server("127.0.0.1", port=19190, port_end=19390)
    yield srv
    srv.terminate()


def test_remote_runs_the_uploaded_libraries(tvm_bundle, server):
    """The outputs that come back over RPC are the libraries' outputs on the same inputs, run here."""
    from edgeuq_runtime.executors.tvm import load_tvm

    session, where = connect(remote=f"127.0.0.1:{server.port}")
    assert where == f"rpc 127.0.0.1:{server.port}"
    times, backends, notes = profile_remote(session, tvm_bundle, (1, 4), warmup=1, repeats=5, seed=7)
    assert backends == {"trunk": "tvm", "head": "tvm"} and set(times) == {"1", "4"}
    b = load_bundle(tvm_bundle)
    for role, spec in (("trunk", b.manifest.trunk), ("head", b.manifest.head)):
        local = load_tvm(b.root / spec.file, None, spec.options)
        arrays = graph_inputs(b, role, 4 if role == "head" else 1, 1, seed=7)
        expected = local.run(dict(zip(spec.options["inputs"], arrays)))[spec.options["outputs"][0]]
        got = times.outputs[role]
        assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-5, rtol=1e-5)
        # the comparison can fail: other inputs give other outputs
        other = local.run(dict(zip(spec.options["inputs"], graph_inputs(b, role, 4 if role == "head" else 1, 1,
                                                                         seed=8))))[spec.options["outputs"][0]]
        assert not np.allclose(got, other, atol=1e-5, rtol=1e-5)
    # the remote time of the head (same machine here) agrees in magnitude with an independent local timing
    spec = b.manifest.head
    local = load_tvm(b.root / spec.file, None, spec.options)
    feeds = dict(zip(spec.options["inputs"], graph_inputs(b, "head", 4, 1, seed=7)))
    local.run(feeds)
    t0 = time.perf_counter()
    for _ in range(20):
        local.run(feeds)
    independent = (time.perf_counter() - t0) / 20 * 1e3
    assert 0.01 * independent <= times["4"]["head"]["median_ms"] <= 10 * independent
    assert any("not measured over RPC" in n for n in notes) and any("per-kernel" in n for n in notes)
    # the graphs carry an AVX2 variant: the library timed is the one the board's CPU (named by its LLVM over
    # RPC; this machine here) makes the executor pick, and the notes say so
    from edgeuq.lower.tvm.targets import X86_ISA_FLAGS
    from edgeuq.profile.tvm_rpc import rpc_board_cpu

    _, flags, _ = rpc_board_cpu(session)
    if flags is not None and X86_ISA_FLAGS["x86-64-v3"] <= flags:
        assert any("the board runs head.x86-64-avx2.so" in n for n in notes), notes
    else:
        assert not any("the board runs" in n for n in notes), notes


def test_cli_remote_report(tvm_bundle, server, tmp_path, capsys):
    rc = main(["profile", "--bundle", str(tvm_bundle), "--remote", f"127.0.0.1:{server.port}", "--samples", "1", "8",
               "--repeats", "10", "--warmup", "2", "--out", str(tmp_path / "r")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "measured: remote (TVM RPC): rpc 127.0.0.1" in text and "not measured" in text
    rep = LatencyReport.load(tmp_path / "r")
    assert rep.location == "remote" and rep.board == "x86-host" and rep.end_to_end == {}
    assert {s: set(per) for s, per in rep.stages.items()} == {"1": {"trunk", "head"}, "8": {"trunk", "head"}}
    assert all(st["repeats"] == 10 and st["median_ms"] > 0 for per in rep.stages.values() for st in per.values())
    assert rep.plots == ("stages.png", "latency_vs_samples.png")


@pytest.fixture
def tracker_port():
    """A TVM RPC tracker on 127.0.0.1, served in a thread of this process (tvm's Tracker would start
    a fresh interpreter, ~15 s on these machines); stopped by closing its loop."""
    import socket
    import threading

    from tvm.rpc import tracker as tracker_mod

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    handlers = []

    def serve():
        import asyncio

        asyncio.set_event_loop(asyncio.new_event_loop())
        h = tracker_mod.TrackerServerHandler(sock, "stop")
        handlers.append(h)
        h.run()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield sock.getsockname()[1]
    if handlers:
        handlers[0]._ioloop.add_callback(handlers[0].stop)
    t.join(timeout=5)


@pytest.mark.slow
def test_tracker_and_key(tvm_bundle, tmp_path, tracker_port):
    srv = rpc.Server("127.0.0.1", port=19510, port_end=19600, key="edgeuq-test",
                     tracker_addr=("127.0.0.1", tracker_port))
    try:
        deadline = time.time() + 60
        while time.time() < deadline:  # wait until the server's key is free on the tracker
            summary = rpc.connect_tracker("127.0.0.1", tracker_port).summary()
            if summary.get("queue_info", {}).get("edgeuq-test", {}).get("free", 0) >= 1:
                break
            time.sleep(0.2)
        rep = profile_bundle(tvm_bundle, tmp_path / "t", samples=(2,), warmup=1, repeats=3,
                             tracker=f"127.0.0.1:{tracker_port}", key="edgeuq-test", plot=False)
        assert rep.location == "remote" and rep.where == f"tracker 127.0.0.1:{tracker_port} key edgeuq-test"
        assert set(rep.stages["2"]) == {"trunk", "head"}
    finally:
        srv.terminate()
    with pytest.raises(ValueError, match="--key"):
        profile_bundle(tvm_bundle, tracker="127.0.0.1:1", samples=(1,))


def test_host_kernel_table_of_a_tvm_library(tvm_bundle, tmp_path):
    """Per-kernel rows on this host: the kernels of the library (not only VM builtins), warm-up
    dropped (calls per run are whole numbers: a leaked warm-up call would make them fractional)."""
    b = load_bundle(tvm_bundle)
    spec = b.manifest.head
    arrays = graph_inputs(b, "head", 4, 1)
    rows, runs = tvm_kernel_table(b.root / spec.file, arrays, warmup=2, repeats=6)
    assert runs == 6
    kernels = {r["name"] for r in rows if r["op"] == "kernel"}
    assert any("matmul" in k for k in kernels) and any("softmax" in k for k in kernels)
    assert all(float(r["calls_per_run"]).is_integer() for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0)
    assert sum(r["us_per_run"] for r in rows if r["op"] == "kernel") > 0
    rep = profile_bundle(tvm_bundle, tmp_path / "h", samples=(4,), warmup=1, repeats=4, plot=False)
    assert rep.location == "host" and "vm.set_instrument" in rep.operator_sources["head"]
    assert {r["op"] for r in rep.operators["trunk"]} == {"kernel", "vm builtin"}


def test_remote_timing_calls_the_bucket_function_the_executor_would():
    """A library with shape buckets: RPC timing and remote placement call ``main_b<rows>`` for the
    bucket the executor picks (brute force here), with the executor's number of calls."""
    from edgeuq.profile.tvm_rpc import _fixed_batch_rows

    opts = {"inputs": ["x"], "outputs": ["y"], "batch": 16, "buckets": [1, 4, 16]}
    for rows in (1, 2, 4, 5, 16, 17, 40):
        size = min(b for b in (1, 4, 16) if b >= min(rows, 16))
        assert _fixed_batch_rows(opts, rows) == (f"main_b{size}", size, -(-rows // 16)), rows
    assert _fixed_batch_rows({"batch": None}, 7) == ("main", 7, 1)
    assert _fixed_batch_rows({"batch": 8}, 20) == ("main", 8, 3)
