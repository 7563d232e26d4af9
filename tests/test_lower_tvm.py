"""TVM lowering on x86 (native): numerics vs ONNX Runtime, tuning database saved and reused,
fixed-batch tuned libraries, and the end-to-end runtime on a TVM bundle."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")

from edgeuq.bundle import build_bundle  # noqa: E402
from edgeuq.catalog import get_target  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower import Evidence, lower  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.lower.tvm import GraphBuild, TvmNumericsError, graph_io  # noqa: E402
from edgeuq.lower.tvm.check import check_artifact  # noqa: E402
from edgeuq.lower.tvm.tune import database_size  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))


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


def test_registry_finds_tvm_by_name_in_a_fresh_interpreter():
    """The registry imports edgeuq.lower.tvm itself on first use (nothing pre-imported), and the
    lowerer it returns is the TVM one with its own frozen options."""
    code = ("import sys; from edgeuq.lower import LOWERERS, get_lowerer; assert 'tvm' not in LOWERERS; "
            "lw = get_lowerer('tvm'); print(type(lw).__module__, lw.Options.__name__, "
            "'edgeuq.lower.tvm.lowerer' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["edgeuq.lower.tvm.lowerer", "TvmOptions", "True"]


def test_x86_untuned_is_dynamic_and_matches_onnxruntime(x86, art):
    md, ev = x86.metadata, x86.evidence
    assert ev.how == "native" and md["tuning"] == "untuned"
    for role in ("trunk", "head"):
        assert ev.detail["max_abs_err"][role] <= ev.detail["tolerance"][role] < 1e-2
        assert getattr(x86, role).executor == "tvm" and getattr(x86, role).options["batch"] is None
        assert md["graphs"][role]["bytes"] > 10_000
    assert ev.max_error == max(ev.detail["max_abs_err"].values()) and ev.max_error <= ev.tolerance
    lat = ev.detail["latency_ms"]
    assert ev.latency_ms == pytest.approx(lat["trunk"] + lat["head"]) and ev.latency_ms > 0
    # an independent timing of the same head library: the recorded figure is the right order of magnitude
    from edgeuq_runtime.executors.tvm import load_tvm
    import time

    g = load_tvm(x86.head.file, None, x86.head.options)
    feats = np.zeros((4, *art.feature_shape), np.float32)
    from edgeuq_runtime.noise import sample_noise

    feeds = {art.feature_name: feats, **sample_noise(art.noise, 4, np.random.default_rng(0))}
    for _ in range(3):
        g.run(feeds)
    times = []
    for _ in range(21):
        t0 = time.perf_counter()
        g.run(feeds)
        times.append((time.perf_counter() - t0) * 1e3)
    independent = float(np.median(times))
    assert 0.05 * independent <= lat["head"] <= 20 * independent
    assert md["compilers"]["tvm"].startswith("0.27") and "g++" in md["compilers"]["cxx"]["version"]


def test_graph_io_reads_names_and_shapes(art):
    inputs, outputs = graph_io(art.head_path)
    assert [n for n, _, _ in inputs] == [art.feature_name, *[s.name for s in art.noise]]
    assert inputs[0][2] == art.feature_shape and outputs == [art.logits_name]


def test_numerics_check_can_fail(art, x86, tmp_path):
    """A head compiled from other weights is caught by the comparison with ONNX Runtime."""
    other = lower("tvm", export_tiny(tmp_path, seed=1), get_target("x86-64"), tmp_path / "o", check="none",
                  graphs=["head"])
    assert other.evidence.how == "compile-only" and other.evidence.max_error is None
    wrong = GraphBuild("head", other.head.file, dict(other.head.options), None, {}, None, 0.0)
    with pytest.raises(TvmNumericsError, match="differs from ONNX Runtime"):
        check_artifact(art, get_target("x86-64"), {"head": wrong})
    right = GraphBuild("head", x86.head.file, dict(x86.head.options), None, {}, None, 0.0)
    assert check_artifact(art, get_target("x86-64"), {"head": right}).how == "native"   # same library: passes


def test_evidence_refuses_nan_and_inconsistent_records():
    with pytest.raises(ValueError, match="NaN"):
        Evidence(how="native", reference="ONNX Runtime", max_error=float("nan"), tolerance=1e-3)
    with pytest.raises(ValueError, match="exceeds its tolerance"):
        Evidence(how="native", reference="ONNX Runtime", max_error=0.1, tolerance=1e-3)
    with pytest.raises(ValueError, match="compile-only evidence cannot carry"):
        Evidence(how="compile-only", latency_ms=1.0)
    with pytest.raises(ValueError, match="evidence kind"):
        Evidence(how="simulated")
    ev = Evidence(how="qemu", reference="ONNX Runtime", max_error=1e-6, tolerance=1e-4, detail={"arch": "aarch64"})
    assert ev.label == "qemu-aarch64" and Evidence.from_json(ev.to_json()) == ev


def test_runtime_on_tvm_bundle_matches_onnxruntime_bundle(art, tmp_path):
    """UncertaintyRuntime unchanged on a bundle whose graphs say backend "tvm"."""
    res = compile_board("x86-host", art, tmp_path / "tvm", samples=8, tuning_root=tmp_path / "db",
                        placement="default", isa_variants=())
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
        assert res.evidence.how == "native" and res.evidence.max_error < 1e-3
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
    assert res.trunk.executor == "onnxruntime"          # not compiled: passed through as ONNX
    head = res.head.file.read_bytes()
    assert head[:4] == b"\x7fELF" and head[18] == 183     # cross-compiled: an aarch64 (EM_AARCH64) library


def test_compiled_artifact_is_stored_hashed_and_verified(x86, art, tmp_path):
    """CompiledArtifact.save copies the libraries under the artifact base (hashed, atomic); load
    verifies them, refuses a changed library, and the stored libraries still compute the same."""
    from edgeuq.artifact import ArtifactError
    from edgeuq.lower import CompiledArtifact
    from edgeuq.lower.tvm.numerics import max_error, ort_outputs, reference_feeds
    from edgeuq_runtime.executors.tvm import load_tvm

    stored = x86.save(tmp_path / "compiled", inputs="abc")
    again = CompiledArtifact.load(tmp_path / "compiled")
    assert again == stored and again.inputs == "abc" and again.digest == stored.digest
    assert again.trunk.file == tmp_path / "compiled" / "trunk.so" and again.evidence == x86.evidence
    feeds = reference_feeds(art)
    got = load_tvm(again.head.file, None, again.head.options).run(feeds["head"])
    assert max_error(got, ort_outputs(art.head_path, feeds["head"])) <= x86.evidence.detail["tolerance"]["head"]
    lib = tmp_path / "compiled" / "head.so"
    data = bytearray(lib.read_bytes())
    data[len(data) // 2] ^= 0xFF                                   # one flipped byte
    lib.unlink()  # a new file: rewriting the library loaded above in place would corrupt its mapping
    lib.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="head.so changed since saving"):
        CompiledArtifact.load(tmp_path / "compiled")


def test_host_isa_detection_and_native_only_where_the_isa_exists(monkeypatch):
    from edgeuq.lower.tvm import targets as tt

    avx512 = {"avx", "avx2", "fma", "bmi2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl", "sse4_2"}
    assert tt.detect_host_target(frozenset(avx512)) == "x86-64-avx512"
    assert tt.detect_host_target(frozenset(avx512 - {"avx512bw"})) == "x86-64-avx2"
    assert tt.detect_host_target(frozenset({"sse2"})) == "x86-64"
    monkeypatch.setattr(tt, "cpu_flags", lambda *a: frozenset({"sse2", "avx", "avx2", "fma", "bmi2", "f16c"}))
    assert tt.is_native(get_target("x86-64-avx2")) and tt.is_native(get_target("x86-64"))
    assert not tt.is_native(get_target("x86-64-avx512"))     # would die of SIGILL here: not "native"


def test_host_isa_target_compiles_and_matches_onnxruntime(art, tmp_path):
    """The detected host-ISA target (AVX-512 / AVX2 where the CPU has them) lowers with its
    mcpu and is checked natively against ONNX Runtime like the generic one."""
    from edgeuq.lower.tvm.targets import detect_host_target

    name = detect_host_target()
    res = lower("tvm", art, get_target(name), tmp_path, samples=4, tuning_root=tmp_path / "db")
    assert res.evidence.how == "native" and res.evidence.max_error <= res.evidence.tolerance < 1e-2
    mcpu = get_target(name).tvm.get("mcpu")
    assert mcpu is None or f"\"mcpu\":\"{mcpu}\"" in res.metadata["tvm_target"]


def test_isa_variants_travel_with_the_generic_library_and_the_runtime_picks_by_cpu_flags(art, tmp_path,
                                                                                         monkeypatch):
    """A generic x86-64 build with an AVX2 variant: the artifact carries both libraries per graph
    (the variant listed with the CPU flags it needs), a bundle of it runs the AVX2 library on a host
    with AVX2 and the generic one on a (faked) SSE-only host, and both give ONNX Runtime's samples."""
    from edgeuq_runtime import hostcpu
    from edgeuq_runtime.executors.tvm import load_tvm

    if "avx2" not in hostcpu.cpu_flags():
        pytest.skip("this host has no AVX2: the AVX2 variant cannot run here")
    res = lower("tvm", art, get_target("x86-64"), tmp_path / "c", samples=4, tuning_root=tmp_path / "db",
                isa_variants=("x86-64-avx2",))
    assert [(v["role"], v["target"]) for v in res.metadata["isa_variants"]] == [("trunk", "x86-64-avx2"),
                                                                               ("head", "x86-64-avx2")]
    assert sorted(res.extra_files) == ["head.x86-64-avx2.so", "trunk.x86-64-avx2.so"]
    for role, g in (("trunk", res.trunk), ("head", res.head)):
        (v,) = g.options["variants"]
        assert v["file"] == f"{role}.x86-64-avx2.so" and {"avx2", "fma"} <= set(v["requires"])
        assert "avx512f" not in v["requires"]
    from edgeuq.bundle.build import BundleGraph, write_artifact_bundle

    graphs = {r: BundleGraph(g.bundle_file(r), g.file, g.executor, dict(g.options))
              for r, g in (("trunk", res.trunk), ("head", res.head))}
    bundle = write_artifact_bundle(art, tmp_path / "b", "tiny", "1.0.0", 4, graphs=graphs,
                                   extra_files=res.extra_files, backend="tvm")
    ort = build_bundle(art, tmp_path / "ort", "tiny", "1.0.0", default_samples=4)
    x = np.random.default_rng(5).standard_normal((3, 128)).astype(np.float32)
    ref = UncertaintyRuntime(ort.root, seed=11).predict(x)
    head = bundle.root / "head.so"
    for flags, expect in ((frozenset({"sse2", "avx", "avx2", "fma", "bmi2", "f16c"}), "head.x86-64-avx2.so"),
                          (frozenset({"sse2"}), "head.so")):
        monkeypatch.setattr(hostcpu, "cpu_flags", lambda *a, f=flags: f)
        assert load_tvm(head, 1, res.head.options).path.name == expect
        a = UncertaintyRuntime(bundle.root, seed=11).predict(x)
        np.testing.assert_allclose(a.samples, ref.samples, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variants, match", [
    (("x86-64",), "no CPU flags beyond"),
    (("cortex-a72",), "not a CPU target of the same machine"),
    (("x86-64-avx2", "x86-64-avx2"), "distinct target names"),
])
def test_bad_isa_variants_are_refused(art, tmp_path, variants, match):
    with pytest.raises(ValueError, match=match):
        lower("tvm", art, get_target("x86-64"), tmp_path, samples=4, tuning_root=tmp_path / "db",
              isa_variants=variants, check="none")
