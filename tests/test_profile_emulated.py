"""An aarch64 bundle profiled over TVM RPC to a server under qemu-aarch64 (the sysroot that
scripts/setup_toolchains.sh makes): the libraries really run there (outputs match ONNX
Runtime), and the report is labelled "emulated" with its times said not to be board times."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from require_extras import in_ci, require_extra

require_extra("tvm", "tvm")

from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.profile.cli import profile_bundle  # noqa: E402
from edgeuq.profile.emulated import EmulatedServer, bundle_qemu_cpu  # noqa: E402
from edgeuq.profile.tvm_rpc import connect, graph_inputs, profile_remote  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime.bundle import load_bundle  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
pytestmark = pytest.mark.slow


def _need_sysroot() -> None:
    from edgeuq.lower.toolchain import ToolchainError
    from edgeuq.lower.tvm.qemu import aarch64_sysroot

    try:
        aarch64_sysroot()
        missing = [t for t in ("qemu-aarch64-static", "aarch64-linux-gnu-g++") if shutil.which(t) is None]
        if missing:
            raise ToolchainError(f"{missing} not on PATH")
    except ToolchainError as exc:
        msg = f"aarch64 emulation toolchain missing ({exc}): run bash scripts/setup_toolchains.sh (make test does)"
        if in_ci():
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture(scope="module")
def pi_bundle(tmp_path_factory):
    _need_sysroot()
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("profile-emulated")
    art = export_onnx(save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), root / "ck", ("a", "b", "c"),
                                      12000.0), root / "onnx")
    return compile_board("raspberry-pi-4", art, root / "bundle", samples=4, tuning_root=root / "db").bundle.root, art


def test_emulated_server_runs_the_aarch64_libraries_and_the_report_says_emulated(pi_bundle, tmp_path):
    import onnxruntime as ort

    bundle_dir, art = pi_bundle
    b = load_bundle(bundle_dir)
    assert bundle_qemu_cpu(b) == "cortex-a72"
    with EmulatedServer("cortex-a72") as srv:
        session, _ = connect(remote=f"127.0.0.1:{srv.port}")
        times, _, _ = profile_remote(session, bundle_dir, (4,), warmup=1, repeats=3, seed=5)
    # independent reference: the exported ONNX head in ONNX Runtime on the same inputs
    spec = b.manifest.head
    feeds = dict(zip(spec.options["inputs"], graph_inputs(b, "head", 4, 1, seed=5)))
    sess = ort.InferenceSession(str(art.head_path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})[0]
    err = float(np.max(np.abs(times.outputs["head"] - ref)))
    assert err <= 1e-4, err
    rep = profile_bundle(bundle_dir, tmp_path / "e", samples=(2,), warmup=1, repeats=3, emulate=True, plot=False)
    assert rep.location == "emulated" and "qemu-aarch64 -cpu cortex-a72" in rep.where
    assert any("not board times" in n for n in rep.notes) and "not board times" in rep.measured_where
    assert set(rep.stages["2"]) == {"trunk", "head"} and rep.end_to_end == {}


def test_emulate_refuses_bundles_without_an_aarch64_target(tmp_path):
    from edgeuq.bundle import build_bundle

    torch.manual_seed(0)
    art = export_onnx(save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), tmp_path / "ck",
                                      ("a", "b", "c"), 12000.0), tmp_path / "onnx")
    plain = build_bundle(art, tmp_path / "bundle", "tiny", "0.1.0")
    with pytest.raises(ValueError, match="--emulate needs a bundle made by `edgeuq compile`"):
        profile_bundle(plain.root, samples=(1,), emulate=True)
    with pytest.raises(ValueError, match="no --remote"):
        profile_bundle(plain.root, samples=(1,), emulate=True, remote="127.0.0.1:9")
