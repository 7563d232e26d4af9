"""The ``tvm`` executor: a TVM-compiled bundle runs through UncertaintyRuntime unchanged and
matches the ONNX Runtime bundle given the same seed (dynamic and fixed batch)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from edgeuq_runtime import BackendError, BundleError, GraphSpec, UncertaintyRuntime, write_bundle
from edgeuq_runtime.executors import EXECUTORS, load_graph
from edgeuq_runtime.executors.tvm import call_plan
from edgeuq_runtime.noise import sample_noise_tiled
from edgeuq_runtime.preprocess import zscore_windows
from rt_helpers import C, F, L, make_graphs, make_head, make_manifest, softmax, tiny_weights

from rt_helpers import require_extra  # noqa: E402

tvm = require_extra("tvm", "the TVM extra (pip install -e '.[tvm]'), installed by make test")

IN = {"trunk": {"signal": (L,)}, "head": {"features": (F,), "mask_0": (F,)}}
OUT = {"trunk": ["features"], "head": ["logits"]}


def _compile(onnx_path: Path, role: str, batch: Optional[int], out: Path) -> dict:
    """Compile one ONNX graph with TVM (x86 host); returns the executor options."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    shapes = None if batch is None else {n: [batch, *s] for n, s in IN[role].items()}
    mod = from_onnx(onnx.load(str(onnx_path)), shape_dict=shapes, keep_params_in_input=False)
    ex = tvm.compile(mod, target=tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}))
    ex.export_library(str(out))
    return {"inputs": list(IN[role]), "outputs": OUT[role], "batch": batch,
            "shapes": {n: list(s) for n, s in IN[role].items()}}


@pytest.fixture(autouse=True, scope="module")
def _tvm_registered():
    """The "tvm" executor is registered by the executors package scan; leave the registry as found."""
    from edgeuq_runtime.executors import tvm as tvm_executor

    saved = dict(EXECUTORS)
    assert EXECUTORS["tvm"] is tvm_executor.load_tvm
    yield tvm_executor
    EXECUTORS.clear()
    EXECUTORS.update(saved)


@pytest.fixture(scope="module")
def graphs(tmp_path_factory):
    src = tmp_path_factory.mktemp("tvm-src")
    W, V = tiny_weights()
    onnx_files = {name.split(".")[0]: path for name, path in make_graphs(src, W, V).items()}
    libs = {}
    for batch in (None, 2):
        for role, path in onnx_files.items():
            lib = src / f"{role}-{batch}.so"
            libs[role, batch] = (lib, _compile(path, role, batch if role == "trunk" else (batch and 3 * batch), lib))
    return onnx_files, libs, (W, V)


def _tvm_bundle(tmp_path, graphs, batch):
    onnx_files, libs, _ = graphs
    (tl, to), (hl, ho) = libs["trunk", batch], libs["head", batch]
    m = make_manifest(backend="tvm", trunk=GraphSpec("trunk.so", ("signal",), ("features",), options=to),
                      head=GraphSpec("head.so", ("features", "mask_0"), ("logits",), options=ho))
    return write_bundle(tmp_path / f"tvm-{batch}", m, {"trunk.so": tl, "head.so": hl}).root


def _ort_bundle(tmp_path, graphs):
    onnx_files, _, _ = graphs
    return write_bundle(tmp_path / "ort", make_manifest(), {"trunk.onnx": onnx_files["trunk"],
                                                           "head.onnx": onnx_files["head"]}).root


def test_registered_on_plain_import_without_importing_tvm():
    """``import edgeuq_runtime`` alone registers "tvm" (the loader from the tvm module) and
    does not import TVM itself; checked in a fresh interpreter, where no fixture has run."""
    code = ("import sys, edgeuq_runtime as e; from edgeuq_runtime.executors import tvm as t; "
            "print(e.EXECUTORS['tvm'] is t.load_tvm, 'tvm' in sys.modules, e.EXECUTOR_FILES['tvm'] is t.tvm_files "
            "if hasattr(e, 'EXECUTOR_FILES') else e.executors.EXECUTOR_FILES['tvm'] is t.tvm_files)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "True"]


@pytest.mark.parametrize("batch", [None, 2], ids=["dynamic-batch", "fixed-batch"])
def test_runtime_matches_onnxruntime(tmp_path, graphs, batch, windows):
    """Same seed, same noise: TVM and ONNX Runtime bundles give the same uncertainty."""
    rt_tvm = UncertaintyRuntime(_tvm_bundle(tmp_path, graphs, batch), seed=3)
    ref_rng = np.random.default_rng(3)  # advances with rt_tvm's session generator
    rt_ort = UncertaintyRuntime(_ort_bundle(tmp_path, graphs), seed=3)
    W, V = graphs[2]
    for x, s in ((windows, 8), (windows[:1], 5), (windows[:3], 1)):   # odd sizes: chunks + padding
        a, b = rt_tvm.predict(x, samples=s), rt_ort.predict(x, samples=s)
        # independent float64 reference with the noise the runtime draws for this call
        mask = sample_noise_tiled(rt_tvm.manifest.noise, s, len(x), ref_rng)["mask_0"].astype(np.float64)
        z = zscore_windows(x).astype(np.float64) @ W.astype(np.float64)
        expected = softmax((np.tile(z, (s, 1)) * mask) @ V.astype(np.float64)).reshape(s, len(x), C)
        np.testing.assert_allclose(a.samples, expected, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a.samples, b.samples, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.epistemic, b.epistemic, rtol=1e-4, atol=1e-6)
        assert (a.prediction == b.prediction).all()
    np.testing.assert_allclose(rt_tvm.deterministic(windows).probs, rt_ort.deterministic(windows).probs,
                               rtol=1e-5, atol=1e-6)


def test_fixed_batch_chunks_and_pads(graphs):
    _, libs, _ = graphs
    lib, opts = libs["trunk", 2]
    g = load_graph("tvm", lib, None, opts)
    assert g.batch == 2 and g.input_shapes["signal"] == (None, L)
    x = np.random.default_rng(0).standard_normal((5, L)).astype(np.float32)
    dyn = load_graph("tvm", libs["trunk", None][0], 1, libs["trunk", None][1])
    np.testing.assert_allclose(g.run({"signal": x})["features"], dyn.run({"signal": x})["features"], rtol=1e-6)
    assert g.run({"signal": x})["features"].shape == (5, F)


def test_wrong_library_is_caught(tmp_path, graphs, windows):
    """A head compiled from other weights must not agree: the comparison can fail."""
    onnx_files, libs, _ = graphs
    other = make_head(tmp_path / "other.onnx", np.ones((F, C), np.float32))
    lib = tmp_path / "other.so"
    opts = _compile(other, "head", None, lib)
    feats = np.random.default_rng(0).standard_normal((4, F)).astype(np.float32)
    feeds = {"features": feats, "mask_0": np.ones((4, F), np.float32)}
    good = load_graph("tvm", libs["head", None][0], None, libs["head", None][1]).run(feeds)["logits"]
    bad = load_graph("tvm", lib, None, opts).run(feeds)["logits"]
    assert np.max(np.abs(good - bad)) > 1e-2


@pytest.mark.parametrize("options,match", [
    ({"outputs": ["features"]}, "needs option 'inputs'"),
    ({"inputs": ["signal"], "outputs": ["features"], "colour": 1}, "unknown graph options"),
    ({"inputs": ["signal"], "outputs": ["features"], "device": "tpu"}, "'device' must be"),
    ({"inputs": ["signal"], "outputs": ["features"], "batch": 0}, "'batch' must be"),
])
def test_bad_options(graphs, options, match):
    lib = graphs[1]["trunk", None][0]
    with pytest.raises(BackendError, match=match):
        load_graph("tvm", lib, None, options)


def test_missing_or_corrupt_library(tmp_path):
    bad = tmp_path / "bad.so"
    bad.write_bytes(b"not a library")
    with pytest.raises(BackendError, match="could not load graph 'bad.so'"):
        load_graph("tvm", bad, None, {"inputs": ["signal"], "outputs": ["features"]})


def test_cuda_graph_without_gpu_is_a_clear_error(graphs):
    if tvm.cuda(0).exist:
        pytest.skip("a CUDA device is present")
    lib, opts = graphs[1]["trunk", None]
    with pytest.raises(BackendError, match="no CUDA device|CUDA kernel binary"):
        load_graph("tvm", lib, None, {**opts, "device": "cuda"})


def test_missing_input_is_reported(graphs):
    lib, opts = graphs[1]["head", None]
    g = load_graph("tvm", lib, None, opts)
    feats = np.random.default_rng(1).standard_normal((2, F)).astype(np.float32)
    with pytest.raises(BackendError, match="missing \\['mask_0'\\]"):
        g.run({"features": feats})
    V = graphs[2][1]
    mask = np.random.default_rng(2).random((2, F)).astype(np.float32)
    np.testing.assert_allclose(g.run({"features": feats, "mask_0": mask})["logits"], (feats * mask) @ V,
                               rtol=1e-5, atol=1e-5)  # the complete feed runs and is right


def test_parameter_names_come_from_the_library(graphs):
    """Options naming the head's inputs in the wrong order are refused: the names are read from
    the compiled library, not trusted from the manifest's own options."""
    lib, opts = graphs[1]["head", None]
    g = load_graph("tvm", lib, None, opts)
    assert g.library_inputs == ("features", "mask_0")
    assert g.evidence == {"input_order": "checked: the library's parameters are ['features', 'mask_0']",
                          "library": f"{lib.name} (the graph's only library)"}
    with pytest.raises(BackendError, match=r"takes parameters \['features', 'mask_0'\], but option 'inputs' says "
                                           r"\['mask_0', 'features'\]"):
        load_graph("tvm", lib, None, {**opts, "inputs": ["mask_0", "features"]})


@pytest.mark.parametrize("kernels, match", [
    ({"ab" * 32: "../outside.cubin"}, "outside the bundle"),
    ({"ab" * 32: "/etc/passwd"}, "outside the bundle"),
    ({"ab" * 32: "kern.cubin"}, "'kern.cubin' is not listed"),
])
def test_cuda_kernel_files_must_be_listed_and_inside(tmp_path, graphs, kernels, match):
    """Every file the executor opens is checked before loading, with or without verification."""
    onnx_files, libs, _ = graphs
    (tl, to), (hl, ho) = libs["trunk", None], libs["head", None]
    m = make_manifest(backend="tvm", trunk=GraphSpec("trunk.so", ("signal",), ("features",), options=to),
                      head=GraphSpec("head.so", ("features", "mask_0"), ("logits",),
                                     options={**ho, "device": "cuda", "cuda_kernels": kernels}))
    root = write_bundle(tmp_path / "cuda", m, {"trunk.so": tl, "head.so": hl}).root
    (root / "kern.cubin").write_bytes(b"not listed")
    (tmp_path / "outside.cubin").write_bytes(b"outside")
    for verify in (True, False):
        with pytest.raises(BundleError, match=match):
            UncertaintyRuntime(root, verify=verify)


def _compile_buckets(onnx_path: Path, buckets, out: Path) -> dict:
    """The tiny head compiled with one function per shape bucket (``main_b<rows>``), as the TVM
    lowering writes it; returns the executor options."""
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    funcs = {}
    for rows in buckets:
        mod = from_onnx(onnx.load(str(onnx_path)), shape_dict={n: [rows, *s] for n, s in IN["head"].items()},
                        keep_params_in_input=False)
        funcs[tvm.ir.GlobalVar(f"main_b{rows}")] = mod["main"].with_attr("global_symbol", f"main_b{rows}")
    ex = tvm.compile(tvm.IRModule(funcs), target=tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu"}))
    ex.export_library(str(out))
    return {"inputs": list(IN["head"]), "outputs": OUT["head"], "batch": max(buckets), "buckets": list(buckets),
            "shapes": {n: list(s) for n, s in IN["head"].items()}}


@pytest.fixture(scope="module")
def bucket_heads(graphs, tmp_path_factory):
    src = tmp_path_factory.mktemp("tvm-buckets")
    out = {}
    for buckets in ((1, 4, 16), (1, 2, 4, 8, 16, 32)):
        lib = src / f"head-{'-'.join(map(str, buckets))}.so"
        out[buckets] = (lib, _compile_buckets(graphs[0]["head"], buckets, lib))
    return out


class _Recorder:
    """Wraps a Relax VM: records which function each call ran and its rows."""

    def __init__(self, vm):
        self.vm, self.calls = vm, []

    def __getitem__(self, name):
        fn = self.vm[name]

        def call(*args):
            self.calls.append((name, int(args[0].shape[0])))
            return fn(*args)
        return call

    def __getattr__(self, name):
        return getattr(self.vm, name)


@pytest.mark.parametrize("buckets", [(1, 4, 16), (1, 2, 4, 8, 16, 32)], ids=["max16", "max32"])
def test_shape_buckets_run_the_smallest_bucket_and_pad_only_up_to_it(graphs, bucket_heads, buckets):
    lib, opts = bucket_heads[buckets]
    g = load_graph("tvm", lib, 1, opts)
    assert g.buckets == buckets and g.batch == buckets[-1]
    g._vm = rec = _Recorder(g._vm)
    rng = np.random.default_rng(0)
    for n in (1, 3, 5, 16, 17, 33, 40):
        rec.calls.clear()
        feeds = {"features": rng.standard_normal((n, F)).astype(np.float32),
                 "mask_0": rng.standard_normal((n, F)).astype(np.float32)}
        out = g.run(feeds)["logits"]
        # brute force: whole chunks of the largest bucket, the rest in the smallest bucket that holds it
        full, rest = divmod(n, buckets[-1])
        expected = [buckets[-1]] * full + ([min(b for b in buckets if b >= rest)] if rest else [])
        assert rec.calls == [(f"main_b{b}", b) for b in expected], (n, rec.calls)
        # what tools that call the library without the executor (RPC timing, profilers) are told
        assert [(fn, size) for fn, size, _ in call_plan(opts, n)] == rec.calls
        assert sum(rows for _, _, rows in call_plan(opts, n)) == n
        ref = (feeds["features"].astype(np.float64) * feeds["mask_0"]) @ graphs[2][1].astype(np.float64)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


def test_bucketed_head_matches_onnxruntime_bundle_for_any_samples_and_max_batch(tmp_path, graphs, bucket_heads,
                                                                               windows):
    """Bundles whose TVM head has shape buckets (largest 16 or 32) give the ONNX Runtime bundle's
    uncertainty for S = 1, 3, 16, 33 (same seed, same noise): the bucket choice and max batch do
    not change results."""
    onnx_files, libs, _ = graphs
    tl, to = libs["trunk", None]
    rt_ort = UncertaintyRuntime(_ort_bundle(tmp_path, graphs), seed=5)
    runtimes = []
    for buckets, (hl, ho) in bucket_heads.items():
        m = make_manifest(backend="tvm", trunk=GraphSpec("trunk.so", ("signal",), ("features",), options=to),
                          head=GraphSpec("head.so", ("features", "mask_0"), ("logits",), options=ho))
        root = write_bundle(tmp_path / f"tvm-{buckets[-1]}", m, {"trunk.so": tl, "head.so": hl}).root
        runtimes.append(UncertaintyRuntime(root, seed=5))
    for s in (1, 3, 16, 33):
        ref = rt_ort.predict(windows[:1], samples=s)
        for rt in runtimes:
            a = rt.predict(windows[:1], samples=s)
            assert a.samples.shape == ref.samples.shape == (s, 1, C)
            np.testing.assert_allclose(a.samples, ref.samples, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(a.epistemic, ref.epistemic, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("extra,match", [
    ({"batch": 16, "buckets": [4, 1, 16]}, "strictly ascending"),
    ({"batch": 16, "buckets": []}, "strictly ascending"),
    ({"batch": 32, "buckets": [1, 4, 16]}, "equal to its largest"),
    ({"batch": 16, "buckets": [1, 2, 16]}, "main_b2"),
])
def test_bad_bucket_options(bucket_heads, extra, match):
    lib, opts = bucket_heads[(1, 4, 16)]
    with pytest.raises(BackendError, match=match):
        load_graph("tvm", lib, None, {**opts, **extra})


AVX512 = frozenset({"sse2", "avx", "avx2", "fma", "bmi2", "f16c", "avx512f", "avx512bw", "avx512dq", "avx512vl"})
AVX2 = frozenset({"sse2", "avx", "avx2", "fma", "bmi2", "f16c"})
SSE = frozenset({"sse2", "sse4_2"})


def _isa_variants(folder: Path, graphs, bucket_heads) -> tuple:
    """A head with per-ISA libraries in one folder: the generic (dynamic batch) one as the graph's
    own library, and two variants (copies of bucketed libraries) for AVX-512 and AVX2 hosts."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    base_lib, base_opts = graphs[1]["head", None]
    (l16, o16), (l32, o32) = bucket_heads[(1, 4, 16)], bucket_heads[(1, 2, 4, 8, 16, 32)]
    shutil.copyfile(base_lib, folder / "head.so")
    shutil.copyfile(l32, folder / "head.x86-64-avx512.so")
    shutil.copyfile(l16, folder / "head.x86-64-avx2.so")
    opts = {**base_opts, "variants": [
        {"file": "head.x86-64-avx512.so", "target": "x86-64-avx512", "requires": sorted(AVX512 - {"sse2"}),
         "batch": 32, "buckets": [1, 2, 4, 8, 16, 32]},
        {"file": "head.x86-64-avx2.so", "target": "x86-64-avx2", "requires": sorted(AVX2 - {"sse2"}),
         "batch": 16, "buckets": [1, 4, 16]}]}
    return folder / "head.so", opts


@pytest.mark.parametrize("flags, library, buckets", [
    (AVX512, "head.x86-64-avx512.so", (1, 2, 4, 8, 16, 32)),
    (AVX2, "head.x86-64-avx2.so", (1, 4, 16)),
    (AVX512 - {"avx512bw"}, "head.x86-64-avx2.so", (1, 4, 16)),   # AVX-512F without BW: not x86-64-v4
    (SSE, "head.so", ()),
], ids=["avx512", "avx2", "avx512f-only", "sse"])
def test_isa_variants_run_the_best_library_the_host_flags_allow(tmp_path, graphs, bucket_heads, monkeypatch,
                                                               flags, library, buckets):
    """Run-time ISA dispatch with faked CPU flags: the executor loads the first variant whose flags
    the host has (else the graph's own library), with that library's buckets, says which one ran
    (evidence "library"), and every choice gives the brute-force logits."""
    from edgeuq_runtime import hostcpu

    path, opts = _isa_variants(tmp_path / "b", graphs, bucket_heads)
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda *a: flags)
    g = load_graph("tvm", path, 1, opts)
    assert g.path.name == library and g.buckets == buckets
    assert g.evidence["library"].startswith(library)
    if library == "head.so":
        assert "fallback" in g.evidence["library"] and "host lacks avx" in g.evidence["library"]
    rng = np.random.default_rng(3)
    for n in (1, 3, 16, 33):
        feeds = {"features": rng.standard_normal((n, F)).astype(np.float32),
                 "mask_0": rng.standard_normal((n, F)).astype(np.float32)}
        ref = (feeds["features"].astype(np.float64) * feeds["mask_0"]) @ graphs[2][1].astype(np.float64)
        np.testing.assert_allclose(g.run(feeds)["logits"], ref, rtol=1e-4, atol=1e-5)


def test_isa_variants_follow_the_host_isa_cap(tmp_path, graphs, bucket_heads, monkeypatch):
    """EDGEUQ_HOST_ISA lowers the flags the executor sees (a faked AVX-512 /proc/cpuinfo here):
    avx2 takes the AVX2 library, sse the generic one."""
    from edgeuq_runtime import hostcpu
    from edgeuq_runtime.executors.tvm import choose_library

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu " + " ".join(sorted(AVX512)) + "\n")
    real = hostcpu.cpu_flags
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda *a: real(cpuinfo))
    path, opts = _isa_variants(tmp_path / "b", graphs, bucket_heads)
    for cap, library in (("", "head.x86-64-avx512.so"), ("avx2", "head.x86-64-avx2.so"), ("sse", "head.so")):
        monkeypatch.setenv(hostcpu.HOST_ISA_ENV, cap)
        chosen, options, why = choose_library(path, opts)
        assert chosen.name == library, (cap, why)
        assert "variants" not in options and (options.get("buckets") is None) == (library == "head.so")


def test_call_plan_names_the_isa_variant_the_executor_runs_and_its_buckets(tmp_path, graphs, bucket_heads,
                                                                           monkeypatch):
    """call_plan follows the library the executor picks (EDGEUQ_HOST_ISA caps a faked AVX-512
    /proc/cpuinfo): it names that library and plans that library's buckets, call for call what the
    loaded graph actually runs (recorded), not the graph's own library's plan."""
    from edgeuq_runtime import hostcpu

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu " + " ".join(sorted(AVX512)) + "\n")
    real = hostcpu.cpu_flags
    monkeypatch.setattr(hostcpu, "cpu_flags", lambda *a: real(cpuinfo))
    path, opts = _isa_variants(tmp_path / "b", graphs, bucket_heads)
    rng = np.random.default_rng(4)
    for cap, library, target in (("", "head.x86-64-avx512.so", "x86-64-avx512"),
                                 ("avx2", "head.x86-64-avx2.so", "x86-64-avx2"), ("sse", "head.so", None)):
        monkeypatch.setenv(hostcpu.HOST_ISA_ENV, cap)
        g = load_graph("tvm", path, 1, opts)
        g._vm = rec = _Recorder(g._vm)
        for n in (1, 3, 16, 33):
            plan = call_plan(opts, n, path=path)
            assert (plan.library, plan.target) == (library, target), (cap, plan.choice)
            assert plan.choice == g.library_choice and plan.buckets == g.buckets and plan.batch == g.batch
            rec.calls.clear()
            g.run({"features": rng.standard_normal((n, F)).astype(np.float32),
                   "mask_0": rng.standard_normal((n, F)).astype(np.float32)})
            assert [(fn, size) for fn, size, _ in plan] == rec.calls, (cap, n, list(plan), rec.calls)
            assert sum(rows for _, _, rows in plan) == n
        # the two variants plan differently from the generic library (so the check above can fail):
        # AVX-512: 33 rows = 32 + 1; AVX2: 16 + 16 + 1; generic (any batch): one call of 33
    monkeypatch.setenv(hostcpu.HOST_ISA_ENV, "")
    assert [s for _, s, _ in call_plan(opts, 33, path=path)] == [32, 1]
    assert [s for _, s, _ in call_plan(opts, 33, path=path, flags=AVX2)] == [16, 16, 1]
    assert [s for _, s, _ in call_plan(opts, 33, path=path, flags=SSE)] == [33]


def test_isa_variant_files_must_be_in_the_bundle(tmp_path, graphs, bucket_heads, windows):
    """A variant library is a file the executor opens: a bundle that does not list it is refused;
    listed, the bundle gives the ONNX Runtime bundle's samples."""
    path, opts = _isa_variants(tmp_path / "b", graphs, bucket_heads)
    tl, to = graphs[1]["trunk", None]
    spec = dict(trunk=GraphSpec("trunk.so", ("signal",), ("features",), options=to),
                head=GraphSpec("head.so", ("features", "mask_0"), ("logits",), options=opts))
    files = {"trunk.so": tl, "head.so": path}
    with pytest.raises(BundleError, match="not listed"):
        UncertaintyRuntime(write_bundle(tmp_path / "missing", make_manifest(backend="tvm", **spec), files).root)
    files.update({v["file"]: path.parent / v["file"] for v in opts["variants"]})
    rt = UncertaintyRuntime(write_bundle(tmp_path / "ok", make_manifest(backend="tvm", **spec), files).root, seed=5)
    ref = UncertaintyRuntime(_ort_bundle(tmp_path, graphs), seed=5).predict(windows[:1], samples=3)
    np.testing.assert_allclose(rt.predict(windows[:1], samples=3).samples, ref.samples, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("variants, match", [
    ([], "non-empty list"),
    ([{"file": "x.so"}], "'file' and 'requires'"),
    ([{"file": "../x.so", "requires": []}], "relative to the graph's folder"),
    ([{"file": "x.so", "requires": "avx2"}], "list of CPU flag names"),
    ([{"file": "x.so", "requires": [], "mcpu": "x"}], "'file' and 'requires'"),
])
def test_bad_isa_variants(graphs, variants, match):
    lib, opts = graphs[1]["head", None]
    with pytest.raises(BackendError, match=match):
        load_graph("tvm", lib, None, {**opts, "variants": variants})


def _placed(a, shift):
    """A copy of ``a`` whose data starts ``shift`` bytes past a 64-byte boundary."""
    raw = np.empty(a.nbytes + 128, np.uint8)
    off = (-raw.ctypes.data) % 64 + shift
    v = raw[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    v[...] = a
    return v


class _ArgRecorder(_Recorder):
    """Also keeps a copy of every argument each VM call saw (the padded, staged buffers)."""

    def __getitem__(self, name):
        fn = self.vm[name]

        def call(*args):
            self.calls.append((name, [np.from_dlpack(a).copy() for a in args]))
            return fn(*args)
        return call


def _fresh_path(vm, feeds, plan):
    """The executor's old path, written out independently: per call, the rows zero-padded by
    concatenation into fresh TVM tensors, the function looked up, the outputs copied by ``.numpy()``."""
    parts, r0 = [], 0
    for fn, size, rows in plan:
        args = []
        for n in ("features", "mask_0"):
            c = feeds[n][r0:r0 + rows]
            c = np.concatenate([c, np.zeros((size - rows, *c.shape[1:]), c.dtype)])
            args.append(tvm.runtime.tensor(np.ascontiguousarray(c)))
        parts.append(vm[fn](*args).numpy()[:rows])
        r0 += rows
    return np.concatenate(parts)


@pytest.mark.parametrize("shift", [0, 16], ids=["aligned-in-place", "misaligned-staged"])
def test_staged_padded_calls_equal_the_fresh_tensor_path_per_bucket(graphs, bucket_heads, shift):
    """Every bucket (full and padded calls, chunked feeds), inputs read in place or staged: the
    executor's outputs equal the old path's (fresh padded tensors per call) and the numpy reference,
    in an order that makes each bucket's staging buffer hold more rows than the next call writes."""
    lib, opts = bucket_heads[(1, 2, 4, 8, 16, 32)]
    g = load_graph("tvm", lib, 1, opts)
    V = graphs[2][1].astype(np.float64)
    rng = np.random.default_rng(3)
    for n in (4, 3, 8, 5, 1, 32, 20, 33, 2, 16, 9, 70, 7):
        feeds = {k: _placed(rng.standard_normal((n, F)).astype(np.float32) + 1.0, shift)
                 for k in ("features", "mask_0")}
        got = g.run(feeds)["logits"]
        old = _fresh_path(g._vm, feeds, call_plan(opts, n))
        ref = (feeds["features"].astype(np.float64) * feeds["mask_0"]) @ V
        assert got.shape == old.shape == (n, C)
        assert np.max(np.abs(got - old)) <= 1e-6, n
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_padding_rows_are_zero_even_after_a_larger_call_filled_the_buffer(graphs, bucket_heads):
    """The padded rows the library sees are zeros, also when the reused staging buffer of that
    bucket was filled by an earlier call with more real rows (4 rows, then 3, then 1 padded to 4...)."""
    lib, opts = bucket_heads[(1, 4, 16)]
    g = load_graph("tvm", lib, 1, opts)
    g._vm = rec = _ArgRecorder(g._vm)
    rng = np.random.default_rng(4)
    for n in (4, 3, 2, 4, 2, 3, 16, 13, 15, 7):
        rec.calls.clear()
        feeds = {k: _placed(rng.standard_normal((n, F)).astype(np.float32) + 5.0, 16)   # no zero rows of its own
                 for k in ("features", "mask_0")}
        g.run(feeds)
        (fn, args), = rec.calls
        size = int(fn.split("_b")[1])
        for name, a in zip(("features", "mask_0"), args):
            assert a.shape == (size, F)
            np.testing.assert_array_equal(a[:n], feeds[name])
            assert not np.any(a[n:]), (n, name, a[n:])


def test_results_of_a_call_are_not_overwritten_by_the_next_calls(graphs, bucket_heads):
    """Reused input buffers and VM outputs never leak into earlier results: the first call's outputs
    keep their values after later calls with other inputs on the same and other buckets."""
    lib, opts = bucket_heads[(1, 4, 16)]
    g = load_graph("tvm", lib, 1, opts)
    V = graphs[2][1].astype(np.float64)
    rng = np.random.default_rng(5)
    kept = []
    for n in (4, 4, 3, 16, 1, 4, 20):
        for shift in (0, 16):
            feeds = {k: _placed(rng.standard_normal((n, F)).astype(np.float32), shift) for k in ("features", "mask_0")}
            out = g.run(feeds)["logits"]
            kept.append((out, out.copy(), (feeds["features"].astype(np.float64) * feeds["mask_0"]) @ V))
    for out, snapshot, ref in kept:
        np.testing.assert_array_equal(out, snapshot)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)
    # and the caller may write into a result without touching the next one
    first = g.run({"features": np.ones((4, F), np.float32), "mask_0": np.ones((4, F), np.float32)})["logits"]
    first[...] = np.nan
    second = g.run({"features": np.ones((4, F), np.float32), "mask_0": np.ones((4, F), np.float32)})["logits"]
    np.testing.assert_allclose(second, np.ones((4, F)) @ V, rtol=1e-4, atol=1e-5)
