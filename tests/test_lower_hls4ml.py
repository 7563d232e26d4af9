"""FPGA lowering through hls4ml: the stochastic head as an AXI-stream IP, C simulation checked.

hls4ml compiles take ~5 s each; the default build is shared (``build_tiny_fpga``, also
used by tests/test_pynq_env.py) and only two more are compiled here.
"""
from __future__ import annotations

import atexit
import ctypes
import functools
import json
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from require_extras import require_extra

require_extra("hls4ml", "fpga")

from edgeuq.catalog import ComputeTarget  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower import get_lowerer, lower  # noqa: E402
from edgeuq.lower.hls4ml import Hls4mlLowerer, Hls4mlOptions  # noqa: E402
from edgeuq.lower.hls4ml import lowerer as hl  # noqa: E402
from edgeuq.lower.hls4ml.estimate import choose_reuse_factors, estimate  # noqa: E402
from edgeuq.lower.hls4ml.fixed import parse_fixed, quantize  # noqa: E402
from edgeuq.lower.hls4ml.head import (  # noqa: E402
    DenseLayer, HeadSpec, HeadStructureError, build_hardware_module, read_head_spec, resolve_types,
)
from edgeuq.lower.hls4ml.pitfalls import (  # noqa: E402
    FpgaPitfallError, check_dense_layout, check_layernorm, check_softmax,
)
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=1, ffn=16, dropout=0.2,
            stochastic_blocks=(), stochastic_head=True)
PART = "xc7z020clg400-1"


def fpga_target(part: str = PART, clock_mhz: float = 100.0) -> ComputeTarget:
    return ComputeTarget(name="fpga-test", kind="fpga", description="test FPGA target", arch="fpga",
                         fpga_part=part, clock_mhz=clock_mhz)


def _tiny_export(root: Path, **cfg):
    torch.manual_seed(0)
    model = SignalTransformer(ModelConfig(**{**TINY, **cfg})).eval()
    with torch.no_grad():  # a trained head has logits spread over several units; make this one do too
        model.head.fc2.weight.mul_(12.0)
    ck = save_checkpoint(model, root / "ck", ("normal", "inner", "outer"), 12000.0)
    return model, export_onnx(ck, root / "onnx")


@functools.lru_cache(maxsize=None)
def build_tiny_fpga():
    """(model, OnnxArtifact, CompiledArtifact, workdir) for a tiny head-only-stochastic model,
    lowered once per process for xc7z020 at 100 MHz."""
    root = Path(tempfile.mkdtemp(prefix="edgeuq-fpga-"))
    atexit.register(shutil.rmtree, root, True)
    model, art = _tiny_export(root)
    compiled = lower("hls4ml", art, fpga_target(), root / "lowered")
    return model, art, compiled, root / "lowered"


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_fpga()


def _csim(lib_path: Path, function: str, rows: np.ndarray, n_out: int) -> np.ndarray:
    lib = ctypes.CDLL(str(lib_path))
    fn = getattr(lib, function)
    fn.argtypes = [ctypes.POINTER(ctypes.c_float)] * 2
    out = np.zeros((len(rows), n_out), np.float32)
    for i, r in enumerate(np.ascontiguousarray(rows, np.float32)):
        y = np.zeros(n_out, np.float32)
        fn(r.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        out[i] = y
    return out


# ------------------------------------------------------------------------------ the lowered artifact


def test_registered_and_head_goes_to_pynq(tiny):
    _, art, compiled, workdir = tiny
    assert isinstance(get_lowerer("hls4ml"), Hls4mlLowerer) and get_lowerer("hls4ml").Options is Hls4mlOptions
    assert compiled.target == "fpga-test"
    assert compiled.trunk.executor == "onnxruntime" and Path(compiled.trunk.file) == art.trunk_path
    assert compiled.head.executor == "pynq" and compiled.head.file == workdir / "head.fpga.json"
    assert compiled.head.options == {"bitfile": "fpga/edgeuq_head.bit", "dma": "hier_0/axi_dma_0"}
    desc = json.loads(compiled.head.file.read_text())
    assert desc["format"] == "edgeuq-pynq-head"
    assert [(i["name"], i["size"]) for i in desc["inputs"]] == [("features", 16), ("head_in", 16), ("head_hidden", 16)]
    assert desc["outputs"] == [{"name": "logits", "size": 3}]
    assert desc["stream"] == {"dtype": "float32", "words_in": 48, "words_out": 3}
    assert desc["hls"]["backend"] == "VivadoAccelerator" and desc["hls"]["part"] == PART
    for name, path in compiled.extra_files.items():
        assert name.startswith("fpga/") and Path(path).is_file(), name
    assert {"fpga/README.md", "fpga/estimate.json", "fpga/axi_stream_driver.py", "fpga/canary.npz",
            "fpga/edgeuq_head_hls.tar.gz", desc["csim"]["library"]} <= set(compiled.extra_files)
    json.dumps(compiled.to_json())  # JSON-clean for the manifest


def test_csim_checked_against_quantized_and_float_references(tiny):
    ev = tiny[2].evidence
    checks = ev.detail["checks"]
    assert ev.how == "c-simulation" and ev.latency_ms is None and "simulated" in ev.reason
    assert ev.max_error == checks["csim_vs_quantized_reference"]["max_abs_error"]
    assert ev.tolerance == checks["tolerance"]
    assert ev.estimates["fpga_resources"]["fits"] is True and "estimate" in ev.estimates["fpga_resources"]["how"]
    q, f = checks["csim_vs_quantized_reference"], checks["csim_vs_float_head"]
    assert q["max_abs_error"] <= checks["tolerance"] < 0.5
    assert q["argmax_agreement"] >= 0.98
    assert f["max_abs_error"] < 0.15 and f["argmax_agreement"] >= 0.97
    assert checks["onnx_readback_max_abs_error"] < 1e-4
    assert checks["logit_range"][1] - checks["logit_range"][0] > 1.0  # the probe really exercises the logits
    # GELU runs as z*sigmoid(1.702 z): its own (float) error is measured and reported
    g = checks["gelu_approximation_vs_float_head"]
    assert 0 < g["max_abs_error"] < 0.1


def test_shipped_csim_library_reproduces_canary_exactly(tiny):
    _, art, compiled, workdir = tiny
    desc = json.loads(compiled.head.file.read_text())
    canary = np.load(workdir / "fpga" / "canary.npz")
    again = _csim(workdir / desc["csim"]["library"], desc["csim"]["function"], canary["stream"], 3)
    assert np.array_equal(again, canary["csim_logits"])  # canary = hls4ml predict() on those rows
    # and the canary's float logits are ONNX Runtime's head on the same rows
    import onnxruntime as ort

    s = canary["stream"]
    feeds = {"features": s[:, :16], "head_in": s[:, 16:32], "head_hidden": s[:, 32:]}
    ref = ort.InferenceSession(str(art.head_path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    assert np.allclose(ref, canary["float_logits"], atol=1e-6)


def test_estimate_is_labelled_an_estimate(tiny):
    _, _, compiled, workdir = tiny
    est = compiled.metadata["estimate"]
    assert est["label"] == "estimate" and "NOT from Vivado" in est["method"]
    assert est == json.loads((workdir / "fpga" / "estimate.json").read_text())
    assert est["fits"] is True and est["available"]["dsp"] == 220
    assert est["resources"]["dsp"] <= 0.75 * 220  # reuse factor "auto" fits the part's DSPs
    assert est["latency"]["cycles_per_row"] > 48 and est["latency"]["us_per_row"] > 0
    readme = (workdir / "fpga" / "README.md").read_text()
    assert "Estimate (analytic, NOT from synthesis)" in readme and "vivado -mode batch -source design.tcl" in readme


def test_bundle_archive_has_hls_project_vivado_scripts_and_driver(tiny):
    workdir = tiny[3]
    with tarfile.open(workdir / "fpga" / "edgeuq_head_hls.tar.gz") as tar:
        names = set(tar.getnames())
        project_tcl = tar.extractfile("edgeuq_head_hls/project.tcl").read().decode()
    for f in ("build_prj.tcl", "design.tcl", "project.tcl", "axi_stream_driver.py", "firmware/edgeuq_head.cpp",
              "firmware/edgeuq_head_axi.cpp", "firmware/parameters.h", "edgeuq_head_bridge.cpp"):
        assert f"edgeuq_head_hls/{f}" in names, f
    assert not any(n.endswith(".so") for n in names)
    assert f'set part "{PART}"' in project_tcl and "set clock_period 10.0" in project_tcl


def test_trunk_attempt_is_recorded_not_faked(tiny):
    trunk = tiny[2].metadata["trunk_fpga"]
    assert trunk["converted"] is False
    assert "LayerNormalization" in trunk["unsupported_operators"]
    assert "Softmax" in trunk["reason"] and "LayerNormalization" in trunk["reason"]
    assert tiny[2].metadata["trunk_on"].startswith("cpu")


def test_precision_plan_sets_per_layer_types(tiny, tmp_path):
    _, art, default, _ = tiny
    plan = {"fc1": "ap_fixed<10,4>", "fc2": "ap_fixed<12,5>", "result": "ap_fixed<18,8>"}
    c = lower("hls4ml", art, fpga_target(), tmp_path / "q", precision=plan, reuse_factor=1, trunk="skip")
    p = c.metadata["precision"]["layers"]
    assert p["fc1"]["weight"] == "ap_fixed<10,4>" and p["fc1"]["bias"] == "ap_fixed<10,4>"
    assert p["fc2"]["weight"] == "ap_fixed<12,5>" and p["fc2"]["result"] == "ap_fixed<18,8>"
    assert p["fc1"]["accum"] == "ap_fixed<32,12>"  # accumulators stay wide
    assert c.metadata["precision_plan"] == plan and c.metadata["reuse_factor"] == {"fc1": 1, "fc2": 1}
    defines = (tmp_path / "q" / "edgeuq_head_hls" / "firmware" / "defines.h").read_text()
    typedefs = {name: t for t, name in re.findall(r"typedef (.+?) (\w+);", defines)}
    # the firmware's own per-layer types: each dense layer's weights, biases and the result as planned
    assert (typedefs["fc1_weight_t"], typedefs["fc1_bias_t"]) == ("ap_fixed<10,4>", "ap_fixed<10,4>")
    assert (typedefs["fc2_weight_t"], typedefs["fc2_bias_t"]) == ("ap_fixed<12,5>", "ap_fixed<12,5>")
    assert typedefs["result_t"] == "ap_fixed<18,8>" and typedefs["fc2_accum_t"] == "ap_fixed<32,12>"
    params = (tmp_path / "q" / "edgeuq_head_hls" / "firmware" / "parameters.h").read_text()
    assert "typedef fc1_weight_t weight_t;" in params and "typedef fc2_weight_t weight_t;" in params
    checks = c.evidence.detail["checks"]
    assert checks["csim_vs_quantized_reference"]["max_abs_error"] <= checks["tolerance"]
    # coarser weights: further from the float head than the default 16-bit build
    assert (checks["quantized_reference_vs_float_head"]["max_abs_error"]
            > default.evidence.detail["checks"]["quantized_reference_vs_float_head"]["max_abs_error"])


def test_numerics_check_catches_the_untransposed_weight_pitfall(tiny, tmp_path, monkeypatch):
    """With the layout guard disabled and ChannelsLastConversion 'off', the C simulation is
    wrong; the comparison with the quantized reference must refuse it."""
    _, art, _, _ = tiny
    real = hl._hls_config

    def off(*args, **kwargs):
        cfg = real(*args, **kwargs)
        cfg["Model"]["ChannelsLastConversion"] = "off"
        return cfg

    monkeypatch.setattr(hl, "_hls_config", off)
    monkeypatch.setattr(hl, "check_all", lambda *a, **k: None)
    with pytest.raises(hl.FpgaNumericsError, match="differs from the quantized reference"):
        lower("hls4ml", art, fpga_target(), tmp_path / "bad", reuse_factor=1, trunk="skip")


# ------------------------------------------------------------------------------ pitfall guards (no compile)


def _convert(module, shape, out, channels_last="full"):
    import hls4ml

    cfg = hls4ml.utils.config_from_pytorch_model(module, shape, granularity="name", backend="Vivado",
                                                 channels_last_conversion=channels_last)
    return hls4ml.converters.convert_from_pytorch_model(module, hls_config=cfg, output_dir=str(out),
                                                        backend="Vivado", io_type="io_parallel")


def test_guard_catches_untransposed_linear_weights(tiny, tmp_path):
    _, art, _, _ = tiny
    spec = read_head_spec(art.head_path, "features", ["head_in", "head_hidden"], "logits")
    module, _ = build_hardware_module(spec)
    weights = {l.name: l.weight for l in spec.layers}
    check_dense_layout(_convert(module, (spec.stream_width,), tmp_path / "ok"), weights)  # the default passes
    with pytest.raises(FpgaPitfallError, match="ChannelsLastConversion='off'"):
        check_dense_layout(_convert(module, (spec.stream_width,), tmp_path / "off", "off"), weights)


def test_guard_refuses_softmax_over_2d_tile(tmp_path):
    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)
            self.sm = torch.nn.Softmax(dim=-1)

        def forward(self, x):
            return self.sm(self.fc(x))

    with pytest.raises(FpgaPitfallError, match="2-D tile"):
        check_softmax(_convert(Scores().eval(), (3, 4), tmp_path / "sm"))


def test_guard_refuses_layernorm(tmp_path):
    class Norm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln = torch.nn.LayerNorm(8)

        def forward(self, x):
            return self.ln(x)

    with pytest.raises(FpgaPitfallError, match="saturates for variance > 1"):
        check_layernorm(_convert(Norm().eval(), (4, 8), tmp_path / "ln"))


def test_hardware_head_has_no_softmax_or_layernorm(tiny):
    _, art, _, _ = tiny
    spec = read_head_spec(art.head_path, "features", ["head_in", "head_hidden"], "logits")
    _, roles = build_hardware_module(spec)
    assert set(roles.values()) <= {"input", "select", "dense", "mul", "scale", "sigmoid", "relu"}


# ------------------------------------------------------------------------------ refusals and units


def test_refuses_non_fpga_targets_and_unknown_options(tiny, tmp_path):
    _, art, _, _ = tiny
    cpu = ComputeTarget(name="cpu", kind="cpu", description="", arch="x86_64")
    with pytest.raises(hl.FpgaTargetError, match="kind 'fpga'"):
        lower("hls4ml", art, cpu, tmp_path)
    with pytest.raises(hl.FpgaTargetError, match="fpga_part and clock_mhz"):
        lower("hls4ml", art, ComputeTarget(name="f", kind="fpga", description="", arch="fpga"), tmp_path)
    with pytest.raises(TypeError, match="unknown hls4ml lowering options"):
        lower("hls4ml", art, fpga_target(), tmp_path, reuse=2)
    with pytest.raises(ValueError, match=r"unknown layers \['fc9'\].*\['fc1', 'fc2'\]"):
        lower("hls4ml", art, fpga_target(), tmp_path, precision={"fc9": "ap_fixed<8,3>"})
    with pytest.raises(ValueError, match="not a fixed-point type"):
        lower("hls4ml", art, fpga_target(), tmp_path, precision={"fc1": "float16"})


def test_refuses_heads_with_encoder_blocks(tmp_path):
    _, art = _tiny_export(tmp_path, stochastic_blocks=(0,))
    with pytest.raises(HeadStructureError, match="stochastic_blocks=\\(\\)"):
        lower("hls4ml", art, fpga_target(), tmp_path / "lowered")


def test_board_template_follows_the_part_family(tiny, tmp_path):
    import hls4ml

    boards = hl._board_templates(hls4ml)
    assert boards[hl.pick_board_template(hls4ml, PART)]["part"] == PART
    zu = hl.pick_board_template(hls4ml, "xczu7ev-ffvc1156-2-e")
    assert boards[zu]["part"].startswith("xczu")
    assert boards[hl.pick_board_template(hls4ml, "xck26-sfvc784-2LV-c")]["part"].startswith("xczu")
    with pytest.raises(hl.FpgaTargetError, match="no hls4ml VivadoAccelerator template"):
        hl.pick_board_template(hls4ml, "xcvu9p-flga2104-2L-e")
    # the written scripts are re-pointed at a different part of the same family
    src = tiny[3] / "edgeuq_head_hls"
    for f in ("design.tcl", "project.tcl"):
        shutil.copy(src / f, tmp_path / f)
    assert hl._adapt_part(tmp_path, PART, "xc7z010clg400-1", None)
    design = (tmp_path / "design.tcl").read_text()
    assert "-part xc7z010clg400-1" in design and "\nset_property board_part" not in design
    assert 'set part "xc7z010clg400-1"' in (tmp_path / "project.tcl").read_text()


@pytest.mark.parametrize("text,x,expected", [
    ("ap_fixed<8,3>", 1.3, 1.28125),                     # TRN: floor to 1/32
    ("ap_fixed<8,3,AP_RND_CONV,AP_SAT>", 1.3, 1.3125),   # round to nearest
    ("ap_fixed<8,3,AP_RND,AP_SAT>", 9.0, 3.96875),       # saturate at max
    ("ap_fixed<8,3>", 4.5, -3.5),                        # wrap around
    ("ap_ufixed<8,3,AP_RND,AP_SAT>", -1.0, 0.0),
    ("ap_int<4>", 9.0, -7.0),
])
def test_fixed_point_emulation(text, x, expected):
    assert float(quantize(np.array([x]), parse_fixed(text))[0]) == expected


def test_auto_reuse_factor_fits_a_small_part():
    rng = np.random.default_rng(0)
    layers = (DenseLayer("fc1", rng.standard_normal((64, 64)).astype(np.float32), np.zeros(64, np.float32)),
              DenseLayer("fc2", rng.standard_normal((4, 64)).astype(np.float32), np.zeros(4, np.float32)))
    spec = HeadSpec("features", "logits", layers, (("head_in", 0), ("head_hidden", 1)), "gelu")
    types = resolve_types(spec)
    zu = "xczu7ev-ffvc1156-2-e"
    rf = choose_reuse_factors(spec, types, zu, "auto")
    assert rf["fc1"] > 1
    est = estimate(spec, types, zu, 100.0, rf)
    assert est["fits"] and est["resources"]["dsp"] <= 0.75 * 1728 and not est["notes"]
    full = estimate(spec, types, zu, 100.0, {"fc1": 1, "fc2": 1})
    assert full["fits"] is False and full["latency"]["cycles_per_row"] < est["latency"]["cycles_per_row"]
    # on a Zynq-7020 the 4 x 64 element-wise multipliers alone exceed the budget: said, not hidden
    small = estimate(spec, types, "xc7z020clg400-1", 100.0, choose_reuse_factors(spec, types, "xc7z020", "auto"))
    assert small["fits"] is False and "element-wise" in small["notes"][0]


def test_ultrascale_part_uses_the_mpsoc_template_adapted_to_the_part(tiny, tmp_path):
    _, art, _, _ = tiny
    part = "xczu7ev-ffvc1156-2-e"
    c = lower("hls4ml", art, fpga_target(part, 200.0), tmp_path / "zu", trunk="skip", board_part="my:board:part0:1.0")
    meta = c.metadata
    import hls4ml

    assert meta["part"] == part and meta["template_part_adapted"] is True
    assert hl._board_templates(hls4ml)[meta["board_template"]]["part"].startswith("xczu")
    assert meta["estimate"]["available"]["dsp"] == 1728 and meta["estimate"]["clock_mhz"] == 200.0
    assert meta["reuse_factor"] == {"fc1": 1, "fc2": 1}  # plenty of DSPs: fully parallel
    hls = tmp_path / "zu" / "edgeuq_head_hls"
    design = (hls / "design.tcl").read_text()
    assert f"-part {part}" in design and "set_property board_part my:board:part0:1.0" in design
    assert "zynq_ultra_ps_e" in design
    assert 'set clock_period 5.0' in (hls / "project.tcl").read_text()
    checks = c.evidence.detail["checks"]
    assert checks["csim_vs_quantized_reference"]["max_abs_error"] <= checks["tolerance"]


def test_trunk_pytorch_frontend_does_not_convert(tmp_path):
    """The recorded attempt through hls4ml's PyTorch frontend: GELU is unsupported, and with
    GELU swapped for ReLU the token layout (transpose) and attention (matmul) are next."""
    import hls4ml

    torch.manual_seed(0)
    model = SignalTransformer(ModelConfig(**TINY)).eval()

    class Trunk(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, x):
            return self.m.trunk(x)

    def convert(m, out):
        cfg = hls4ml.utils.config_from_pytorch_model(m, (TINY["input_length"],), granularity="name", backend="Vivado")
        return hls4ml.converters.convert_from_pytorch_model(m, hls_config=cfg, output_dir=str(out), backend="Vivado")

    with pytest.raises(Exception, match="Unsupported layer GELU"):
        convert(Trunk(model).eval(), tmp_path / "a")
    for mod in list(model.modules()):
        for name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.GELU):
                setattr(mod, name, torch.nn.ReLU())
    with pytest.raises(Exception, match="Unsupported function transpose"):
        convert(Trunk(model).eval(), tmp_path / "b")


class _SlicedHead(torch.nn.Module):
    """A text trunk's head: features [classifier | density] (2d), the head reads columns [lo, hi)."""

    def __init__(self, d: int = 6, hidden: int = 5, lo: int = 0, hi: int = 6) -> None:
        super().__init__()
        self.fc1, self.fc2, self.lo, self.hi = torch.nn.Linear(hi - lo, hidden), torch.nn.Linear(hidden, 3), lo, hi

    def forward(self, features, m_in, m_hidden):
        h = torch.nn.functional.gelu(self.fc1(features[:, self.lo:self.hi] * m_in))
        return self.fc2(h * m_hidden)


def _sliced_head_onnx(path: Path, lo: int = 0, hi: int = 6, d: int = 6) -> Path:
    torch.manual_seed(0)
    args = (torch.randn(2, 2 * d), torch.ones(2, hi - lo), torch.ones(2, 5))
    torch.onnx.export(_SlicedHead(d, 5, lo, hi), args, str(path), input_names=["features", "m_in", "m_hidden"],
                      output_names=["logits"], dynamic_axes={n: {0: "b"} for n in ("features", "m_in", "m_hidden",
                                                                                      "logits")},
                      opset_version=17, dynamo=False)
    return path


def test_a_head_reading_the_leading_feature_columns_streams_all_and_uses_those(tmp_path):
    """The deployed text student's head slices its classifier columns off [classifier | density]: the FPGA
    stream carries the whole feature row (the runtime packs what the trunk emits) and the hardware
    selects the leading columns; checked against ONNX Runtime and against the float head on those columns,
    with large values in the density columns (a hardware that read them would be far off)."""
    import onnxruntime as ort

    from edgeuq.lower.hls4ml.head import float_forward, pack_rows, verify_spec

    path = _sliced_head_onnx(tmp_path / "head.onnx")
    spec = read_head_spec(path, "features", ["m_in", "m_hidden"], "logits")
    assert (spec.feature_size, spec.feature_columns, spec.input_sizes()) == (12, 6, (12, 6, 5))
    assert verify_spec(spec, path) <= 1e-4
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((7, 12)).astype(np.float32)
    feats[:, 6:] *= 100.0
    feeds = {"features": feats, "m_in": (rng.random((7, 6)) > 0.3).astype(np.float32) / 0.7,
             "m_hidden": (rng.random((7, 5)) > 0.3).astype(np.float32) / 0.7}
    ref = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logits"], feeds)[0]
    assert float(np.max(np.abs(float_forward(spec, feeds) - ref))) <= 1e-4
    module, _ = build_hardware_module(spec)
    with torch.no_grad():
        hw = module(torch.from_numpy(pack_rows(spec, feeds))).numpy()
    assert float(np.max(np.abs(hw - float_forward(spec, feeds, gelu_approx=True)))) <= 1e-4
    assert float(np.max(np.abs(hw - ref))) <= 0.1          # GELU approximation only (about 0.02 per unit)


@pytest.mark.parametrize("lo, hi", [(1, 7), (6, 12)])
def test_a_head_reading_other_feature_columns_is_refused(tmp_path, lo, hi):
    path = _sliced_head_onnx(tmp_path / "head.onnx", lo, hi)
    with pytest.raises(HeadStructureError, match="Slice"):
        read_head_spec(path, "features", ["m_in", "m_hidden"], "logits")
