"""Cross targets: aarch64 libraries run under qemu-aarch64 through the runtime's executor and
agree with ONNX Runtime; armv7 (Cortex-A9) libraries run under qemu-arm through a TVM C++
runtime cross-built from the wheels' sources (``tvm_vm_driver``) and agree with ONNX Runtime;
CUDA kernels are compiled to cubins for every CUDA target (run only where a GPU exists)."""
from __future__ import annotations

import dataclasses
import shutil
import subprocess

import numpy as np
import pytest
import torch

from require_extras import require_extra

tvm = require_extra("tvm", "tvm")

from edgeuq.catalog import get_target, load_targets  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower import lower  # noqa: E402
from edgeuq.lower.toolchain import ToolchainError, toolchains_dir  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
CUDA_TARGETS = sorted(n for n, t in load_targets().items() if t.kind == "gpu")
ELF_MAGIC = b"\x7fELF"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} missing: run bash scripts/setup_toolchains.sh (make test does)")


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-cross")
    m = SignalTransformer(ModelConfig(**TINY)).eval()
    return export_onnx(save_checkpoint(m, root / "ck", ("a", "b", "c"), 12000.0), root / "onnx")


@pytest.mark.slow
def test_aarch64_under_qemu_matches_onnxruntime(art, tmp_path):
    _need("aarch64-linux-gnu-g++")
    _need("qemu-aarch64-static")
    res = lower("tvm", art, get_target("cortex-a72"), tmp_path, samples=4, check="require")
    ev = res.evidence
    assert ev.how == "qemu" and ev.label == "qemu-aarch64" and ev.latency_ms is None
    assert ev.detail["qemu_cpu"] == "cortex-a72"                              # pinned, not qemu's "max"
    for role in ("trunk", "head"):
        assert ev.detail["max_abs_err"][role] <= ev.detail["tolerance"][role]
        assert getattr(res, role).file.read_bytes()[:4] == ELF_MAGIC
        assert getattr(res, role).file.read_bytes()[18] == 183           # e_machine EM_AARCH64


def test_aarch64_qemu_check_can_fail(art, tmp_path):
    """Wrong outputs under qemu are reported, not averaged away."""
    _need("qemu-aarch64-static")
    from edgeuq.lower.tvm import GraphBuild, TvmNumericsError
    from edgeuq.lower.tvm import qemu as tvm_qemu

    res = lower("tvm", art, get_target("cortex-a53"), tmp_path, check="none", graphs=["head"])
    build = GraphBuild("head", res.head.file, dict(res.head.options), None, {}, None, 0.0)
    real = tvm_qemu.run_aarch64

    def corrupted(graphs, workdir, cpu):
        return [{k: v + 0.5 for k, v in out.items()} for out in real(graphs, workdir, cpu)]

    tvm_qemu.run_aarch64 = corrupted
    try:
        with pytest.raises(TvmNumericsError, match="under qemu"):
            tvm_qemu.check_under_qemu(art, get_target("cortex-a53"), {"head": build})
    finally:
        tvm_qemu.run_aarch64 = real


def _armv7_driver_built() -> bool:
    from edgeuq.lower.tvm.armv7 import driver_path

    try:
        driver_path()
        return True
    except ToolchainError:
        return False


def test_armv7_cross_compiles_hard_float(art, tmp_path, monkeypatch, capsys):
    """armv7 (Cortex-A9) libraries are cross-built and linked for the hard-float ABI; without the
    armv7 runtime driver they are labelled "compile only" (ARMV7_GAP), and check="require" fails."""
    _need("arm-linux-gnueabihf-g++")
    from edgeuq.lower.tvm.qemu import ARMV7_GAP

    monkeypatch.setenv("EDGEUQ_TOOLCHAINS", str(tmp_path / "no-toolchains"))   # hide the driver
    res = lower("tvm", art, get_target("cortex-a9"), tmp_path, samples=4)
    assert res.evidence.how == "compile-only" and res.evidence.max_error is None
    assert ARMV7_GAP in res.evidence.reason and "check='auto'" in res.evidence.reason
    assert "WARNING: evidence downgraded to compile-only" in capsys.readouterr().err   # said loudly
    for role in ("trunk", "head"):
        elf = getattr(res, role).file.read_bytes()
        assert elf[:4] == ELF_MAGIC and elf[4] == 1                          # 32-bit ELF
        assert int.from_bytes(elf[18:20], "little") == 40                   # e_machine EM_ARM
        assert int.from_bytes(elf[36:40], "little") & 0x400                 # EF_ARM_ABI_FLOAT_HARD
    with pytest.raises(ToolchainError, match="no TVM runtime for armv7"):
        lower("tvm", art, get_target("cortex-a9"), tmp_path / "req", check="require", graphs=["head"])


def test_armv7_tensor_file_roundtrip(tmp_path):
    from edgeuq.lower.tvm.armv7 import read_tensors, write_tensors

    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([-1, 7], dtype=np.int64),
              np.float32(2.5).reshape(()), np.zeros((0, 3), np.float32)]
    write_tensors(tmp_path / "t.bin", arrays)
    back = read_tensors(tmp_path / "t.bin")
    assert len(back) == len(arrays)
    for a, b in zip(arrays, back):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.slow
def test_armv7_under_qemu_matches_onnxruntime(art, tmp_path):
    """Cortex-A9 trunk + head run under qemu-arm (hard-float) through tvm_vm_driver and agree with
    ONNX Runtime on the same inputs and noise; the fixed-batch chunking/padding path agrees too."""
    _need("arm-linux-gnueabihf-g++")
    _need("qemu-arm-static")
    if not _armv7_driver_built():
        pytest.fail("armv7 tvm_vm_driver missing: run bash scripts/setup_toolchains.sh (make test does)")
    from edgeuq.lower.tvm.numerics import max_error, ort_outputs, reference_feeds
    from edgeuq.lower.tvm.qemu import run_armv7_graph

    res = lower("tvm", art, get_target("cortex-a9"), tmp_path, samples=4, check="require")
    ev = res.evidence
    assert ev.label == "qemu-armv7" and ev.latency_ms is None
    assert ev.detail["qemu_cpu"] == "cortex-a9"                                  # not qemu's permissive "max"
    for role in ("trunk", "head"):
        assert ev.detail["max_abs_err"][role] <= min(ev.detail["tolerance"][role], 1e-4)
        assert int.from_bytes(getattr(res, role).file.read_bytes()[18:20], "little") == 40   # EM_ARM
    # Chunked in 2-row pieces (last one zero-padded): same numbers as ONNX Runtime.
    feeds = reference_feeds(art)
    g = res.trunk
    got = run_armv7_graph(g.file, {**g.options, "batch": 2}, feeds["trunk"], tmp_path, cpu="cortex-a9")
    ref = ort_outputs(art.trunk_path, feeds["trunk"])
    assert next(iter(got.values())).shape == next(iter(ref.values())).shape
    assert max_error(got, ref) <= 1e-4


def test_armv7_qemu_check_can_fail(art, tmp_path, monkeypatch):
    """Wrong armv7 outputs under qemu are reported, not averaged away."""
    _need("qemu-arm-static")
    if not _armv7_driver_built():  # make test builds it: missing there is a failure, like the tools above
        pytest.fail("armv7 tvm_vm_driver not built: run bash scripts/setup_toolchains.sh (make test does)")
    from edgeuq.lower.tvm import GraphBuild, TvmNumericsError
    from edgeuq.lower.tvm import qemu as tvm_qemu

    res = lower("tvm", art, get_target("cortex-a9"), tmp_path, check="none", graphs=["head"])
    build = GraphBuild("head", res.head.file, dict(res.head.options), None, {}, None, 0.0)
    real = tvm_qemu.run_armv7_graph
    monkeypatch.setattr(tvm_qemu, "run_armv7_graph",
                        lambda *a, **k: {n: v + 0.5 for n, v in real(*a, **k).items()})
    with pytest.raises(TvmNumericsError, match="under qemu"):
        tvm_qemu.check_under_qemu(art, get_target("cortex-a9"), {"head": build})


@pytest.mark.parametrize("name", CUDA_TARGETS)
def test_cuda_kernels_compiled_into_the_artifact(art, tmp_path, name):
    _need("nvcc")
    _need(get_target(get_target(name).cuda_host).cross_compiler)
    res = lower("tvm", art, get_target(name), tmp_path, samples=4)
    arch = get_target(name).arch
    assert res.evidence.how == "compile-only" and "no GPU" in res.evidence.reason
    for role in ("trunk", "head"):
        g = getattr(res, role)
        cubin = tmp_path / g.options["cuda_kernels"][next(iter(g.options["cuda_kernels"]))]
        assert g.options["device"] == "cuda" and cubin.name == f"{role}.{arch}.cubin"
        assert cubin.read_bytes()[:4] == ELF_MAGIC and cubin.stat().st_size > 1000
        assert cubin.name in res.extra_files
        meta = res.metadata["graphs"][role]["cuda"]
        assert meta["kernels"] > 5 and meta["method"] in ("nvcc", "ptx-retarget")


def test_missing_ptxas_is_a_clear_error(monkeypatch, tmp_path):
    from edgeuq.lower.tvm import cuda as tvm_cuda

    _need("nvcc")
    monkeypatch.setattr(tvm_cuda, "ptxas_path", lambda: None)
    with pytest.raises(ToolchainError, match="sm_53 is not supported by the installed nvcc"):
        tvm_cuda.compile_kernels("__global__ void k() {}", "sm_53", tmp_path / "k.cubin")


def test_cuda_runs_where_a_gpu_exists(art, tmp_path):
    if not tvm.cuda(0).exist:
        pytest.skip("no CUDA GPU on this host (the CUDA compile is tested above)")
    from edgeuq.lower.tvm.numerics import max_error, ort_outputs, reference_feeds
    from edgeuq_runtime.executors.tvm import load_tvm

    major, minor = tvm.cuda(0).compute_version.split(".")
    target = dataclasses.replace(get_target("cuda-sm87"), arch=f"sm_{major}{minor}", cuda_host="x86-64",
                                 tvm={"kind": "cuda", "arch": f"sm_{major}{minor}"})
    res = lower("tvm", art, target, tmp_path, check="none")
    feeds = reference_feeds(art)
    for role in ("trunk", "head"):
        g = getattr(res, role)
        got = load_tvm(g.file, None, g.options).run(feeds[role])
        ref = ort_outputs(art.trunk_path if role == "trunk" else art.head_path, feeds[role])
        assert max_error(got, ref) < 1e-3


def test_toolchains_dir_is_git_ignored(monkeypatch, tmp_path):
    """The cache defaults to <repo>/.toolchains in a checkout, git ignores it, and
    $EDGEUQ_TOOLCHAINS overrides it."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.delenv("EDGEUQ_TOOLCHAINS", raising=False)
    assert toolchains_dir() == repo / ".toolchains"
    probe = ".toolchains/some-sysroot/lib.so"
    ignored = subprocess.run(["git", "-C", str(repo), "check-ignore", "-q", "--no-index", probe])
    assert ignored.returncode == 0, f"{probe} is not git-ignored"
    monkeypatch.setenv("EDGEUQ_TOOLCHAINS", str(tmp_path / "tc"))
    assert toolchains_dir() == tmp_path / "tc"


def test_aarch64_qemu_cpu_is_pinned_per_target_and_unknown_refused():
    """Each aarch64 target's mcpu maps to a qemu CPU model (never the permissive "max"); an
    mcpu qemu cannot emulate is refused with a clear error instead of running on "max"."""
    from edgeuq.lower.tvm.qemu import qemu_cpu

    for t in load_targets().values():
        if t.kind == "cpu" and t.arch in ("aarch64", "armv7"):
            cpu = qemu_cpu(t)
            assert cpu != "max" and cpu.split("-")[0] in ("cortex", "neoverse", "a64fx")
    assert qemu_cpu(get_target("cortex-a53")) == "cortex-a53"
    odd = dataclasses.replace(get_target("cortex-a72"), tvm={**get_target("cortex-a72").tvm, "mcpu": "cortex-x9"})
    with pytest.raises(ValueError, match="no qemu-aarch64 CPU model known for mcpu 'cortex-x9'"):
        qemu_cpu(odd)
    if shutil.which("qemu-aarch64-static"):   # the names are qemu's own
        listed = subprocess.run(["qemu-aarch64-static", "-cpu", "help"], capture_output=True, text=True).stdout
        for t in load_targets().values():
            if t.kind == "cpu" and t.arch == "aarch64":
                assert qemu_cpu(t) in listed.split()
