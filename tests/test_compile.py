"""`edgeuq compile --board B`: one bundle per board, per-graph placement from the descriptor,
budgets reported, clear errors for missing lowerers and mismatched executors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")

from edgeuq import catalog  # noqa: E402
from edgeuq.bundle import build_bundle  # noqa: E402
from edgeuq.cli import main  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower import CompileSettings, Evidence, get_lowerer  # noqa: E402
from edgeuq.lower.compile import LoweringNotAvailable, compile_board, overall_ok, weight_bytes  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime, load_bundle  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
BOARD = """name = "{name}"
description = "user board"
targets = ["x86-64"]
memory_mb = 512
executor = "tvm"
[graphs.trunk]
target = "x86-64"
[graphs.head]
target = "x86-64"
{head}
[budgets]
latency_ms = {latency}
weight_bytes = {weights}
mc_samples = 4
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny-compile")
    m = SignalTransformer(ModelConfig(**TINY)).eval()
    ck = save_checkpoint(m, root / "ck", ("a", "b", "c"), 12000.0)
    return ck, export_onnx(ck, root / "onnx")


@pytest.fixture
def user_board(tmp_path, monkeypatch):
    monkeypatch.setenv(catalog.ENV_VAR, str(tmp_path / "desc"))
    (tmp_path / "desc" / "boards").mkdir(parents=True)

    def write(name, head="", latency=1000.0, weights=10**9):
        (tmp_path / "desc" / "boards" / f"{name}.toml").write_text(
            BOARD.format(name=name, head=head, latency=latency, weights=weights))
        return name

    return write


def test_cli_compiles_x86_host_from_checkpoint(tiny, tmp_path, capsys):
    ck, _ = tiny
    out = tmp_path / "bundle"
    rc = main(["compile", "--board", "x86-host", "--checkpoint", str(ck.directory), "--out", str(out),
               "--samples", "4", "--json", str(tmp_path / "r.json"), "--quiet", "--tuning-db", str(tmp_path / "db"),
               "--placement", "default", "--isa-variants", "x86-64-avx2"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "board x86-host" in text and "latency_ms" in text and "budgets met" in text
    m = load_bundle(out).manifest
    assert (m.trunk.backend, m.head.backend, m.backend) == ("tvm", "tvm", "tvm")
    assert m.metadata["board"] == "x86-host" and m.metadata["targets"]["head"]["target"] == "x86-64"
    lowered = m.metadata["lowering"]["tvm:x86-64"]
    assert lowered["compilers"]["tvm"].startswith("0.27") and lowered["tuning"] == "untuned"
    ev = Evidence.from_json(lowered["evidence"])
    assert ev.how == "native" and ev.max_error <= ev.tolerance < 1e-2 and ev.latency_ms > 0
    # --isa-variants replaced the board's list (AVX2 + AVX-512): one AVX2 library per graph travels with the
    # generic one, and the evidence names the library this host's executor ran
    assert [(v["role"], v["target"]) for v in lowered["isa_variants"]] == [("trunk", "x86-64-avx2"),
                                                                          ("head", "x86-64-avx2")]
    assert {"trunk.x86-64-avx2.so", "head.x86-64-avx2.so"} <= set(m.files)
    from edgeuq.lower.tvm.targets import X86_ISA_FLAGS
    from edgeuq_runtime.hostcpu import cpu_flags

    runs_avx2 = X86_ISA_FLAGS["x86-64-v3"] <= cpu_flags()
    assert ev.detail["library"]["head"]["file"] == ("head.x86-64-avx2.so" if runs_avx2 else "head.so")
    report = json.loads((tmp_path / "r.json").read_text())["report"]
    assert report["mc_samples"] == {"used": 4, "budget": 16, "ok": True}
    # the reported latency is the runtime's own: an independent timing of the same call agrees in magnitude
    import time

    rt = UncertaintyRuntime(out, seed=0, verify=False)
    x1 = np.random.default_rng(0).standard_normal((1, 128)).astype(np.float32)
    for _ in range(3):
        rt.predict(x1, samples=4)
    times = []
    for _ in range(21):
        t0 = time.perf_counter()
        rt.predict(x1, samples=4)
        times.append((time.perf_counter() - t0) * 1e3)
    independent = float(np.median(times))          # a median, like the report (robust to a busy machine)
    assert 0.1 * independent <= report["latency_ms"]["measured"] <= 10 * independent
    assert report["latency_ms"]["ok"] is (report["latency_ms"]["measured"] <= report["latency_ms"]["budget"])
    r = UncertaintyRuntime(out, seed=0).predict(torch.randn(2, 128).numpy())
    assert r.samples.shape == (4, 2, 3)


def test_budgets_not_met_are_reported(tiny, tmp_path, user_board):
    _, art = tiny
    res = compile_board(user_board("b-tight", latency=1e-6, weights=10), art, tmp_path / "b", samples=8,
                        tuning_root=tmp_path / "db")
    assert res.report["weight_bytes"] == {"measured": weight_bytes(art), "budget": 10, "ok": False}
    assert res.report["latency_ms"]["ok"] is False and res.report["mc_samples"]["ok"] is False
    assert res.report["ok"] is False


def test_unregistered_lowering_is_a_clear_error(tiny, tmp_path, user_board):
    _, art = tiny
    name = user_board("b-nope", head='lowering = "no-such-backend"\nexecutor = "tvm"')
    with pytest.raises(LoweringNotAvailable, match="needs lowerer 'no-such-backend' for graphs \\['head'\\]"):
        compile_board(name, art, tmp_path / "b")


def test_executor_mismatch_is_a_clear_error(tiny, tmp_path, user_board):
    _, art = tiny
    name = user_board("b-mismatch", head='lowering = "tvm"\nexecutor = "onnxruntime"')
    with pytest.raises(ValueError, match="produced the head graph for executor 'tvm'.*declares 'onnxruntime'"):
        compile_board(name, art, tmp_path / "b")


def test_onnxruntime_passthrough_and_mixed_placement(tiny, tmp_path, user_board):
    """Trunk on TVM, head as plain ONNX for onnxruntime: one bundle, two executors, and the same
    predictions as the all-ONNX-Runtime bundle of the same export (same seed, same noise)."""
    _, art = tiny
    name = user_board("b-mixed", head='executor = "onnxruntime"')
    res = compile_board(name, art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db")
    m = res.bundle.manifest
    assert (m.trunk.file, m.trunk.backend, m.head.file, m.head.backend) == ("trunk.so", "tvm", "head.onnx",
                                                                          "onnxruntime")
    assert res.report["latency_ms"]["measured"] > 0 and res.report["ok"] is True
    ref = build_bundle(art, tmp_path / "ort", "ref", "0.0.1", default_samples=4)
    x = np.random.default_rng(3).standard_normal((5, 128)).astype(np.float32)
    got = UncertaintyRuntime(res.bundle.root, seed=1).predict(x)
    want = UncertaintyRuntime(ref.root, seed=1).predict(x)
    assert got.samples.shape == (4, 5, 3)
    np.testing.assert_allclose(got.samples, want.samples, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got.epistemic, want.epistemic, rtol=1e-3, atol=1e-6)
    assert (got.prediction == want.prediction).all()
    # and the check can fail: another seed draws other noise, so the samples differ
    other = UncertaintyRuntime(ref.root, seed=2).predict(x)
    assert not np.allclose(got.samples, other.samples, rtol=1e-4, atol=1e-5)


def test_unmeasured_latency_is_never_met():
    """"not measured" never counts as met; a measured miss is NOT met; estimates do not count."""
    base = {"board": "b", "weight_bytes": {"ok": True}, "mc_samples": {"ok": True}, "bundle_bytes": 1}
    assert overall_ok({**base, "latency_ms": {"ok": True}}) is True
    assert overall_ok({**base, "latency_ms": {"ok": None}}) is None
    assert overall_ok({**base, "latency_ms": {"ok": None}, "weight_bytes": {"ok": False}}) is False
    assert overall_ok({**base, "latency_ms": {"ok": None}, "estimates": {"x": {"fits": True}}}) is None
    from edgeuq.lower.cli import verdict

    assert verdict({**base, "latency_ms": {"ok": None}, "ok": None}).startswith("budgets NOT CONFIRMED: latency_ms")
    assert verdict({**base, "latency_ms": {"ok": True}, "ok": True}) == "budgets met"


def test_unknown_board_lists_boards(tiny, tmp_path, capsys):
    _, art = tiny
    rc = main(["compile", "--board", "no-such-board", "--onnx", str(art.directory), "--out", str(tmp_path / "b")])
    assert rc == 2 and "no-such-board" in capsys.readouterr().err


@pytest.mark.slow
def test_fpga_board_trunk_on_tvm_head_on_hls4ml(tmp_path):
    """pynq-z2: trunk lowered by TVM for the Cortex-A9, head by hls4ml for the xc7z020, one bundle."""
    require_extra("hls4ml", "fpga")
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(**{**TINY, "stochastic_blocks": ()})).eval()   # head-only stochastic split
    art = export_onnx(save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0), tmp_path / "onnx")
    res = compile_board("pynq-z2", art, tmp_path / "b")
    m = res.bundle.manifest
    assert (m.trunk.backend, m.head.backend) == ("tvm", "pynq") and m.trunk.file == "trunk.so"
    assert res.bundle.path(m.trunk.file).read_bytes()[18] == 40          # EM_ARM: the Cortex-A9 library
    assert set(m.metadata["lowering"]) == {"tvm:cortex-a9", "hls4ml:xc7z020"}
    assert res.report["latency_ms"]["measured"] is None and "not measured" in res.report["latency_ms"]["how"]
    assert res.report["latency_ms"]["ok"] is None and res.report["ok"] is None     # never "met" unmeasured
    fpga = res.report["estimates"]["hls4ml:xc7z020:fpga_resources"]
    assert fpga["fits"] is True and "estimate" in fpga["how"]
    evidence = {k: Evidence.from_json(v["evidence"]) for k, v in m.metadata["lowering"].items()}
    assert evidence["hls4ml:xc7z020"].how == "c-simulation" and evidence["hls4ml:xc7z020"].latency_ms is None
    assert evidence["tvm:cortex-a9"].label in ("qemu-armv7", "compile-only")


def test_fpga_head_takes_precisions_from_a_quant_plan(tmp_path):
    """`--quant-plan`: the plan's head precisions become the hls4ml head's per-layer types."""
    require_extra("hls4ml", "fpga")
    plan = {"fc1": "ap_fixed<14,6>", "fc2": "ap_fixed<18,8>"}
    hls = get_lowerer("hls4ml")
    assert hls.options_for(CompileSettings(precision=plan), ["head"]).precision == plan
    assert hls.options_for(CompileSettings(), ["head"]).precision is None
    torch.manual_seed(0)
    m = SignalTransformer(ModelConfig(**{**TINY, "stochastic_blocks": ()})).eval()
    art = export_onnx(save_checkpoint(m, tmp_path / "ck", ("a", "b", "c"), 12000.0), tmp_path / "onnx")
    res = compile_board("pynq-z2", art, tmp_path / "b", precision=plan)
    meta = res.bundle.manifest.metadata["lowering"]["hls4ml:xc7z020"]
    assert meta["precision_plan"] == plan
    assert "14,6" in json.dumps(meta["precision"]) and "18,8" in json.dumps(meta["precision"])


@pytest.fixture(scope="module")
def tiny_text(tmp_path_factory):
    """An (untrained) tiny token model with its word tokenizer, exported to ONNX."""
    from edgeuq.data import build_word_tokenizer
    from edgeuq.export import TOKENIZER_FILE

    root = tmp_path_factory.mktemp("tiny-text")
    texts = ["the bearing is fine", "a loud grinding noise", "fine and quiet", "noise noise grinding",
             "quiet bearing", "the noise is loud"]
    tok = build_word_tokenizer(texts, max_length=8, min_freq=1)
    torch.manual_seed(0)
    cfg = ModelConfig(input_length=8, num_classes=2, patch=1, embed="token", vocab_size=tok.vocab_size, d_model=16,
                      heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
    m = SignalTransformer(cfg).eval()
    ck = save_checkpoint(m, root / "ck", ("neg", "pos"), 1.0, "none")
    tok.save(ck.directory / TOKENIZER_FILE)
    return m, tok, texts, export_onnx(ck, root / "onnx")


@pytest.mark.parametrize("head", ["", 'executor = "onnxruntime"'], ids=["tvm", "tvm+onnxruntime"])
def test_token_model_compiled_for_a_board_runs_like_pytorch(tiny_text, tmp_path, user_board, head):
    """A text model compiled for a board keeps its int64 token input, vocab_size and tokenizer
    (one manifest builder for every path), and UncertaintyRuntime.predict_text on the compiled
    bundle gives PyTorch's MC probabilities for the same token ids and noise."""
    from edgeuq.export import TOKENIZER_FILE
    from edgeuq.models import mc_sample_probs
    from edgeuq_runtime.noise import sample_noise_tiled

    m, tok, texts, art = tiny_text
    res = compile_board(user_board("b-text", head=head), art, tmp_path / "b", samples=4,
                        tuning_root=tmp_path / "db")
    spec = res.bundle.manifest.input
    assert (spec.dtype, spec.normalization, spec.vocab_size, spec.tokenizer) == \
        ("int64", "none", tok.vocab_size, TOKENIZER_FILE)
    assert TOKENIZER_FILE in res.bundle.manifest.files and res.bundle.manifest.trunk.backend == "tvm"
    rt = UncertaintyRuntime(res.bundle.root, seed=0)
    ids = rt.tokenize(texts)
    assert np.array_equal(ids, tok.encode_batch(texts))
    r = rt.predict_text(texts, samples=6, seed=5)
    noise = sample_noise_tiled(rt.manifest.noise, 6, len(texts), np.random.default_rng(5))  # what predict draws
    with torch.no_grad():
        p_torch = mc_sample_probs(m, torch.from_numpy(ids), 6, noise=noise).numpy()
    assert r.samples.shape == p_torch.shape == (6, len(texts), 2)
    assert np.ptp(p_torch) > 1e-3        # outputs vary over inputs and samples: the comparison means something
    assert np.abs(r.samples - p_torch).max() < 1e-4
    assert res.report["latency_ms"]["measured"] > 0
