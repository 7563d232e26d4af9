"""Per-graph placement by measurement: `edgeuq compile` lowers a board's candidate placements, times
them where that is honest (here only when the board is this host; over TVM RPC otherwise), keeps the
fastest per graph, records the figures in the manifest's `placement` section, and the runtime runs
each graph on the executor recorded there."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")

from edgeuq.catalog import DescriptorError, read_descriptor  # noqa: E402
from edgeuq.bundle import build_bundle  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.catalog import get_target  # noqa: E402
from edgeuq.lower.placement import HostMeasurer, Option, choose  # noqa: E402
from edgeuq.lower.tvm.targets import is_native  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.profile.harness import LatencyStats  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import ManifestError, UncertaintyRuntime  # noqa: E402
from edgeuq_runtime.executors.onnxruntime import OrtGraph  # noqa: E402
from edgeuq_runtime.executors.tvm import TvmGraph  # noqa: E402
from edgeuq_runtime.manifest import Manifest  # noqa: E402
from edgeuq_runtime.placement import parse_placement  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

#: Whether this host runs AVX-512 code (honours EDGEUQ_HOST_ISA, so CI runs both branches on one machine).
HOST_RUNS_AVX512 = is_native(get_target("x86-64-avx512"))
TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
RUNNER = {"onnxruntime": OrtGraph, "tvm": TvmGraph}


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("placement")
    ck = save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), root / "ck", ("a", "b", "c"), 12000.0)
    return export_onnx(ck, root / "onnx")


@pytest.fixture(scope="module")
def reference(art, tmp_path_factory):
    """The single-executor (ONNX Runtime) bundle of the same graphs."""
    return build_bundle(art, tmp_path_factory.mktemp("ref") / "ort", "tiny", "1.0.0", default_samples=4)


@pytest.fixture(scope="module")
def host_compile(art, tmp_path_factory):
    root = tmp_path_factory.mktemp("x86")
    return compile_board("x86-host", art, root / "bundle", samples=4, tuning_root=root / "db")


def _x():
    return np.random.default_rng(5).standard_normal((5, 128)).astype(np.float32)


def _same_outputs(bundle_dir, reference):
    a = UncertaintyRuntime(bundle_dir, seed=11).predict(_x())
    b = UncertaintyRuntime(reference.root, seed=11).predict(_x())
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-4, atol=1e-5)
    assert (a.prediction == b.prediction).all()


def _assert_runs_on_recorded_executors(bundle_dir):
    rt = UncertaintyRuntime(bundle_dir, seed=0)
    rec = rt.manifest.sections["placement"]
    for role, runner in rt.graph_runners.items():
        assert isinstance(runner, RUNNER[rec.graphs[role].executor]), (role, runner, rec.graphs[role].executor)
    return rec


def test_x86_host_measures_every_candidate_and_runs_the_fastest(host_compile, reference):
    res = host_compile
    rec = res.bundle.manifest.sections["placement"]
    assert rec.measured == "host" and rec.samples == 4 and rec.repeats == 20
    assert res.report["placement"] == rec.to_json()
    for role in ("trunk", "head"):
        g = rec.graphs[role]
        keys = {(c.executor, c.target) for c in g.candidates}
        # the TVM candidate is the generic x86-64 library with its AVX2 and AVX-512 variants (run-time ISA
        # dispatch): it runs on every x86-64 CPU, so both candidates are timed on any host
        assert keys == {("tvm", "x86-64"), ("onnxruntime", "x86-64")}
        assert all(c.status == "measured" for c in g.candidates)
        timed = [c for c in g.candidates if c.status == "measured"]
        assert len(timed) >= 2 and all(c.median_ms > 0 and c.repeats == 20 and c.check == "native" for c in timed)
        # the choice is the smallest median, recomputed here from the recorded figures
        fastest = min(timed, key=lambda c: c.median_ms)
        assert g.chosen_by == "fastest measured" and (g.executor, g.target) == (fastest.executor, fastest.target)
        assert [c.default for c in g.candidates] == [True] + [False] * (len(g.candidates) - 1)
        spec = getattr(res.bundle.manifest, role)
        assert spec.backend == g.executor
    rec = _assert_runs_on_recorded_executors(res.bundle.root)
    _same_outputs(res.bundle.root, reference)
    # the TVM lowering shipped the board's per-ISA libraries, and its evidence names the one this host ran
    # (the best the host's flags allow, EDGEUQ_HOST_ISA honoured), with that library's buckets
    from edgeuq.lower.tvm.targets import detect_host_target

    m = res.bundle.manifest
    tvm = next((v for k, v in m.metadata["lowering"].items() if k == "tvm:x86-64"), None)
    if tvm is not None:
        assert sorted((v["role"], v["target"]) for v in tvm["isa_variants"]) == sorted(
            (r, t) for r in tvm["roles"] for t in ("x86-64-avx2", "x86-64-avx512"))
        best = detect_host_target()
        for role in tvm["roles"]:
            ran = tvm["evidence"]["detail"]["library"][role]
            assert ran["file"] == (f"{role}.so" if best == "x86-64" else f"{role}.{best}.so"), ran
            assert f"{role}.x86-64-avx2.so" in m.files and f"{role}.x86-64-avx512.so" in m.files
    # the lowering records and targets in the metadata are the chosen ones only
    assert {r for v in m.metadata["lowering"].values() for r in v["roles"]} == {"trunk", "head"}
    assert m.metadata["targets"]["head"]["executor"] == rec.graphs["head"].executor


class _Forced(HostMeasurer):
    """The host measurer with made-up figures (ms per (role, executor, target)): the choice must follow them."""

    def __init__(self, figures):
        super().__init__(warmup=1, repeats=5)
        self.figures = figures
        self.asked = []

    def measure(self, role, options, feeds):
        self.asked.append((role, [o.key for o in options], {k: v.shape for k, v in feeds.items()}))
        return {o.key: LatencyStats.from_samples([self.figures[(role, o.executor, o.target)]] * 5, role)
                for o in options}


def test_forced_slow_candidate_is_not_chosen_and_mixed_executors_run(art, reference, tmp_path):
    figures = {("trunk", "tvm", "x86-64"): 1.0, ("trunk", "onnxruntime", "x86-64"): 50.0,
               ("head", "tvm", "x86-64"): 40.0, ("head", "onnxruntime", "x86-64"): 3.0}
    fake = _Forced(figures)
    res = compile_board("x86-host", art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db", measurer=fake,
                        isa_variants=())     # the choice is the point here, not the per-ISA libraries
    rec = res.bundle.manifest.sections["placement"]
    assert (rec.graphs["trunk"].executor, rec.graphs["trunk"].target) == ("tvm", "x86-64")
    assert (rec.graphs["head"].executor, rec.graphs["head"].target) == ("onnxruntime", "x86-64")
    assert (res.bundle.manifest.trunk.backend, res.bundle.manifest.head.backend) == ("tvm", "onnxruntime")
    # the measurer got each graph's real workload: 1 window for the trunk, S = 4 rows for the head
    shapes = {role: feeds for role, _, feeds in fake.asked}
    assert shapes["trunk"] == {"signal": (1, 128)} and all(s[0] == 4 for s in shapes["head"].values())
    _assert_runs_on_recorded_executors(res.bundle.root)
    _same_outputs(res.bundle.root, reference)


def _opt(executor, target, default=False, native=True):
    return Option(executor, target, executor, default, graph=object(), check="native" if native else "compile-only",
                  native=native)


@pytest.mark.parametrize("tvm_ms, ort_ms, chosen", [
    (2.0, 1.0, "onnxruntime"),      # ONNX Runtime measured faster: TVM, the board's default, is not kept
    (1.0, 2.0, "tvm"),              # TVM measured faster: TVM
    (5.0, 4.99, "onnxruntime"),     # a hair faster still wins: no bias towards the default
])
def test_tvm_is_chosen_only_where_measured_faster(tvm_ms, ort_ms, chosen):
    """Issue 23: placement picks TVM only where it was measured faster than ONNX Runtime -- with TVM
    as the board's default and first option, fake timings where ONNX Runtime wins must pick it."""
    for role in ("trunk", "head"):
        g = choose(role, [_opt("tvm", "x86-64", True), _opt("onnxruntime", "x86-64")],
                   _Forced({(role, "tvm", "x86-64"): tvm_ms, (role, "onnxruntime", "x86-64"): ort_ms}), {})
        assert g.chosen_by == "fastest measured" and g.executor == chosen, (role, g)
        assert {c.executor: c.median_ms for c in g.candidates} == {"tvm": tvm_ms, "onnxruntime": ort_ms}


def test_choose_keeps_the_default_unless_every_usable_candidate_was_measured():
    class Partial(HostMeasurer):
        def measure(self, role, options, feeds):
            return {o.key: (LatencyStats.from_samples([9.0], "x") if o.executor == "tvm" else "not measured: no way")
                    for o in options}

    opts = [_opt("tvm", "a", True), _opt("onnxruntime", "a"), _opt("tvm", "b", native=False)]
    g = choose("head", opts, Partial(), {})
    assert g.chosen_by == "board default" and (g.executor, g.target) == ("tvm", "a")
    status = {c.target + c.executor: c.status for c in g.candidates}
    assert status == {"atvm": "measured", "aonnxruntime": "not measured", "btvm": "excluded"}
    assert "did not run here" in g.candidates[2].reason and g.candidates[2].median_ms is None
    # a candidate whose lowering failed is excluded and does not block the choice among the rest
    failed = Option("tvm", "c", "tvm", False, error="boom")
    g = choose("head", [_opt("tvm", "a", True), _opt("onnxruntime", "a"), failed], _Forced(
        {("head", "tvm", "a"): 5.0, ("head", "onnxruntime", "a"): 4.0}), {})
    assert g.chosen_by == "fastest measured" and g.executor == "onnxruntime"
    assert g.candidates[2].status == "excluded" and "lowering failed: boom" in g.candidates[2].reason


BOARD = """
name = "{name}"
description = "x86 box reached only over the network"
targets = ["x86-64", "x86-64-avx512"]
memory_mb = 1024
executor = "tvm"

[graphs.trunk]
target = "x86-64"
candidates = [{{ executor = "tvm", target = "x86-64-avx512" }}]

[graphs.head]
target = "x86-64"
candidates = [{{ executor = "onnxruntime", target = "x86-64" }}]

[budgets]
latency_ms = 100.0
weight_bytes = 8000000
mc_samples = 16
"""


@pytest.fixture
def remote_board(tmp_path, monkeypatch):
    (tmp_path / "desc" / "boards").mkdir(parents=True)
    (tmp_path / "desc" / "boards" / "test-net-x86.toml").write_text(BOARD.format(name="test-net-x86"))
    monkeypatch.setenv("EDGEUQ_DESCRIPTORS_DIR", str(tmp_path / "desc"))
    return "test-net-x86"


def test_unmeasured_board_keeps_the_default_and_says_not_measured(art, remote_board, tmp_path):
    res = compile_board(remote_board, art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db")
    rec = res.bundle.manifest.sections["placement"]
    assert rec.measured == "not measured" and "not this host" in rec.where
    for role in ("trunk", "head"):
        g = rec.graphs[role]
        assert g.chosen_by == "board default" and (g.executor, g.target) == ("tvm", "x86-64")
        for c in g.candidates:
            assert c.median_ms is None and c.repeats is None, c
            # AVX-512 code on a host without AVX-512 cannot even be checked here: excluded, never run
            want = "excluded" if c.target == "x86-64-avx512" and not HOST_RUNS_AVX512 else "not measured"
            assert c.status == want, (c, HOST_RUNS_AVX512)
        assert "not measured" in g.reason
    assert (res.bundle.manifest.trunk.backend, res.bundle.manifest.head.backend) == ("tvm", "tvm")
    _assert_runs_on_recorded_executors(res.bundle.root)


def test_remote_placement_times_tvm_libraries_over_rpc(art, remote_board, tmp_path):
    """Over a real TVM RPC server on 127.0.0.1: both TVM trunk candidates are timed there and the faster
    kept; the head's ONNX Runtime candidate cannot be timed over RPC, so the head keeps the default."""
    from tvm import rpc

    srv = rpc.Server("127.0.0.1", port=19700, port_end=19800)
    try:
        res = compile_board(remote_board, art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db",
                            remote=f"127.0.0.1:{srv.port}")
    finally:
        srv.terminate()
    rec = res.bundle.manifest.sections["placement"]
    assert rec.measured == "remote" and rec.where == f"rpc 127.0.0.1:{srv.port}"
    trunk = rec.graphs["trunk"]
    # the RPC server is this host: AVX-512 code is timed only where this CPU runs it (else excluded,
    # and with one usable candidate left there is nothing to time: the default stays, "not measured")
    if HOST_RUNS_AVX512:
        assert all(c.status == "measured" and c.median_ms > 0 for c in trunk.candidates)
        assert trunk.chosen_by == "fastest measured"
        assert trunk.chosen.median_ms == min(c.median_ms for c in trunk.candidates)
    else:
        status = {c.target: c.status for c in trunk.candidates}
        assert status == {"x86-64": "not measured", "x86-64-avx512": "excluded"}, trunk.candidates
        assert "only one usable placement" in trunk.candidates[0].reason
        assert trunk.chosen_by == "board default" and trunk.target == "x86-64"
    head = rec.graphs["head"]
    assert head.chosen_by == "board default" and head.executor == "tvm"
    ort = next(c for c in head.candidates if c.executor == "onnxruntime")
    assert ort.status == "not measured" and "TVM RPC" in ort.reason and ort.median_ms is None
    _assert_runs_on_recorded_executors(res.bundle.root)


def test_placement_section_is_parsed_strictly(host_compile, tmp_path):
    good = host_compile.bundle.manifest.to_json()
    Manifest.from_json(good)  # as written

    def refused(edit, match):
        doc = copy.deepcopy(good)
        edit(doc["placement"])
        with pytest.raises(ManifestError, match=match):
            Manifest.from_json(doc)

    def slower(pl):  # claim "fastest measured" for a candidate that is not the fastest
        g = pl["graphs"]["trunk"]
        loser = max((c for c in g["candidates"] if c["status"] == "measured"), key=lambda c: c["median_ms"])
        g["executor"], g["target"], g["lowering"] = loser["executor"], loser["target"], loser["lowering"]

    refused(slower, "not the smallest median")
    refused(lambda pl: pl.update(extra=1), "unknown keys")
    refused(lambda pl: pl["graphs"]["head"]["candidates"][0].update(status="not measured", reason="x"),
            "carries no figures")
    refused(lambda pl: pl["graphs"]["head"]["candidates"][0].update(median_ms=float("inf")), "finite")
    refused(lambda pl: pl["graphs"]["head"].update(executor="pynq"), "not among its candidates")
    refused(lambda pl: pl.update(measured="not measured"), "not measured")
    refused(lambda pl: pl["graphs"]["head"]["candidates"][1].update(default=True), "exactly one")
    refused(lambda pl: pl["graphs"].pop("head"), "exactly")
    # a bundle whose graph runs elsewhere than the placement chose is refused by the runtime
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(host_compile.bundle.root, bad)
    doc = json.loads((bad / "manifest.json").read_text())
    g = doc["placement"]["graphs"]["trunk"]
    other = next(c for c in g["candidates"] if c["executor"] != g["executor"])
    doc["graphs"]["trunk"]["backend"] = other["executor"]
    (bad / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match="placement section chose"):
        UncertaintyRuntime(bad)
    assert parse_placement(good["placement"]).to_json() == good["placement"]


def test_board_candidates_are_validated(tmp_path):
    def board(extra_trunk):
        p = tmp_path / "b.toml"
        p.write_text(BOARD.format(name="b").replace(
            'candidates = [{ executor = "tvm", target = "x86-64-avx512" }]', extra_trunk))
        return p

    b = read_descriptor("boards", board('candidates = [{ executor = "onnxruntime", target = "x86-64" }]'))
    assert [(c.executor, c.target) for c in b.graphs.trunk.options()] == [("tvm", "x86-64"), ("onnxruntime", "x86-64")]
    assert b.placement.measure_on_host is False
    with pytest.raises(DescriptorError, match="not one of the board's targets"):
        read_descriptor("boards", board('candidates = [{ executor = "tvm", target = "cortex-a72" }]'))
    with pytest.raises(DescriptorError, match="unknown key"):
        read_descriptor("boards", board('candidates = [{ executor = "tvm", target = "x86-64", speed = 1 }]'))
    with pytest.raises(DescriptorError, match="duplicate candidate"):
        read_descriptor("boards", board('candidates = [{ executor = "onnxruntime", target = "x86-64" }, '
                                        '{ executor = "onnxruntime", target = "x86-64" }]'))


def test_cli_prints_and_records_the_placement(art, remote_board, tmp_path, capsys):
    from edgeuq.cli import main

    rc = main(["compile", "--board", remote_board, "--onnx", str(art.directory), "--out", str(tmp_path / "b"),
               "--samples", "4", "--quiet", "--tuning-db", str(tmp_path / "db"), "--json", str(tmp_path / "r.json")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "placement (not measured: board 'test-net-x86' is not this host" in out
    assert "tvm on x86-64 (default)" in out and "yes: board default" in out
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["report"]["placement"] == doc["manifest"]["placement"]
    assert doc["report"]["placement"]["graphs"]["head"]["candidates"][1]["status"] == "not measured"
    with pytest.raises(SystemExit):
        main(["compile", "--board", remote_board, "--onnx", str(art.directory), "--out", str(tmp_path / "c"),
              "--placement", "fastest"])
