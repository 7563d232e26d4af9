"""The chain-built text student on every board (issue 22 item 5): a tiny text teacher -> the
compression chain (vocab, distill, posterior) -> :func:`edgeuq.text.boards.compile_text_student`
for x86-host, pynq-z2 and an x86 host whose weight budget only int8 meets. Each row is checked
against an independent reference: the compiled bundle's predictions against host PyTorch fed the
same noise rows, weight bytes against a direct sum over the raw payloads of the exported tensors
(and, for fp32, a closed form over the PyTorch parameters), budgets against the board TOML read
here, and the FPGA's MC-dropout head against the Laplace student it was moved from (same
parameters, same deterministic pass). What compiles is the deployed network (``DIR/student``), so
every bundle's trunk also emits the student's Avg-Avg density feature: checked against
edgeuq.text.ood's own pooling loop on the chain's last checkpoint and against the PyTorch deploy
model, fp32 and int8, and calibrated with a density model afterwards."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from require_extras import require_extra

require_extra("tvm", "tvm")
require_extra("safetensors", "text")

from edgeuq.compress.steps import StepData, get_step, step_options  # noqa: E402
from edgeuq.lower import Evidence  # noqa: E402
from edgeuq.schemes.registry import SCHEMES, get_scheme  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["the film is good", "a very dull plot", "what city is the capital ?", "superb !", "boring , awful story"]


def _toml_budgets(board: str) -> dict:
    with open(ROOT / "boards" / f"{board}.toml", "rb") as f:
        return tomllib.load(f)["budgets"]


def _raw_bytes(*graphs: Path) -> int:
    """Bytes of every initializer's payload, read from the protobuf fields directly (not numpy)."""
    import onnx
    from onnx import TensorProto, helper

    total = 0
    for g in graphs:
        for t in onnx.load(str(g)).graph.initializer:
            if t.HasField("raw_data"):
                total += len(t.raw_data)
            else:
                n = int(np.prod(t.dims)) if len(t.dims) else 1
                total += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
                assert t.data_type != TensorProto.STRING
    return total


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from test_text_student_chain import OVERRIDES, STEPS
    from text_teacher_support import tiny_text_teacher

    from edgeuq.text.student_chain import build_text_student

    d = tmp_path_factory.mktemp("text-student-boards")
    teacher = tiny_text_teacher(d)
    st = build_text_student(teacher.directory, d / "student", "text-student", steps=STEPS, overrides=OVERRIDES,
                            log=lambda m: None)
    return st, d


_COMPILED: dict = {}


def _compile(st, d, board, name, **kw):
    from edgeuq.text.boards import compile_text_student

    if (d, name) not in _COMPILED:
        # the chain's output folder, as `edgeuq text-student --out` writes it
        _COMPILED[d, name] = compile_text_student(Path(st.summary["checkpoint"]).parents[1], board,
                                                  d / f"bundle-{name}", d / "work", samples=4, tuning_root=d / "db",
                                                  **kw)
    return _COMPILED[d, name]


def _deploy(st):
    from edgeuq.training import load_checkpoint

    return load_checkpoint(Path(st.summary["deploy_checkpoint"]))


def _density_references(st, texts=TEXTS):
    """(ids, the Avg-Avg feature from edgeuq.text.ood's pooling loop on the chain's last checkpoint,
    the PyTorch deploy model's density columns, the same loop over all but the last layer)."""
    from edgeuq.compress.chain import tokenizer_of
    from edgeuq.text.ood import avg_avg, layer_pooled

    model = st.checkpoint.load_model().eval()
    ids = tokenizer_of(st.checkpoint).encode_batch(list(texts))
    lp = layer_pooled(model.encoder, ids)
    deploy = _deploy(st).load_model().eval()
    a, b = deploy.density_columns
    with torch.no_grad():
        dep = deploy.trunk(torch.from_numpy(ids)).numpy()[:, a:b]
    return ids, avg_avg(lp), dep, avg_avg(lp[:, :-1])


def test_x86_host_row_runs_the_students_own_head_like_host_pytorch_within_the_toml_budget(student):
    from text_teacher_support import student_bundle_error

    st, d = student
    sb = _compile(st, d, "x86-host", "x86", placement="default", isa_variants=())
    # the deployed network (the chain's last checkpoint + its density feature), its own head
    assert sb.checkpoint.digest == _deploy(st).digest and sb.head_scheme == st.checkpoint.config.scheme
    assert sb.weights == "fp32"
    same, other = student_bundle_error(st, TEXTS, samples=4, bundle=sb.result.bundle.root)
    assert same <= 1e-4, same
    assert not other <= 1e-4, other                    # the noise rows matter: the check is not vacuous
    rep, toml = sb.result.report, _toml_budgets("x86-host")
    raw = _raw_bytes(sb.export.trunk_path, sb.export.head_path)
    assert rep["weight_bytes"]["measured"] == raw == sb.fp32_weight_bytes
    assert rep["weight_bytes"]["budget"] == toml["weight_bytes"]
    assert rep["weight_bytes"]["ok"] is (raw <= toml["weight_bytes"])
    lat = rep["latency_ms"]                            # both graphs native here: measured, against the TOML
    assert lat["measured"] is not None and lat["budget"] == toml["latency_ms"]
    assert lat["ok"] is (lat["measured"] <= toml["latency_ms"])


def test_the_x86_bundle_emits_the_deploy_networks_density_feature_and_calibrates_with_it(student, tmp_path):
    """fp32: the board bundle's density columns equal the Avg-Avg feature of every student layer (edgeuq.text.ood's
    loop on the chain's last checkpoint) and the PyTorch deploy model's; then edgeuq calibrate fits its density
    model on exactly those columns."""
    from text_teacher_support import sentiment_rows

    from edgeuq.calibrate.fit import calibrate_text_bundle
    from edgeuq_runtime import UncertaintyRuntime

    st, d = student
    sb = _compile(st, d, "x86-host", "x86", placement="default", isa_variants=())
    dim = st.checkpoint.config.d_model
    assert sb.density_columns == (dim, 2 * dim) == sb.export.density_columns
    rt = UncertaintyRuntime(sb.result.bundle.root, threads=1)
    assert rt.manifest.metadata["density_columns"] == [dim, 2 * dim]
    ids, want, dep, wrong = _density_references(st)
    got = rt.trunk_features(ids)
    assert got.shape == (len(ids), 2 * dim)
    err, err_dep = float(np.max(np.abs(got[:, dim:] - want))), float(np.max(np.abs(got[:, dim:] - dep)))
    assert err <= 1e-5 and err_dep <= 1e-5, (err, err_dep)
    assert not float(np.max(np.abs(got[:, dim:] - wrong))) <= 1e-5        # every layer counts: not vacuous
    label = {"thumbs down": 0, "Thumbs-Up": 1}
    cal, fit = sentiment_rows(20, 41), sentiment_rows(40, 42)
    res, _ = calibrate_text_bundle(sb.result.bundle.root, [t for t, _ in cal], [label[y] for _, y in cal],
                                   [t for t, _ in fit], [label[y] for _, y in fit], out_dir=tmp_path / "cal")
    dens = res.calibration.density
    assert dens is not None and dens.pooling == f"columns:{dim}:{2 * dim}" and dens.dim == dim
    assert res.scores.density is not None and np.all(np.isfinite(res.scores.density))


def test_pynq_row_carries_an_mc_dropout_head_over_the_students_weights_with_c_simulation(student):
    require_extra("hls4ml", "fpga")
    from edgeuq.export import export_onnx
    from edgeuq.lower.compile import HeadNoiseError, compile_board

    st, d = student
    sb = _compile(st, d, "pynq-z2", "pynq")
    lap = st.checkpoint.load_model().eval()
    mc = sb.checkpoint.load_model().eval()
    # a scheme with a text head that samples at inference with nothing fitted after training
    head = get_scheme(sb.head_scheme).text_head
    assert head is not None and not head.post_hoc_posterior and sb.head_scheme != lap.cfg.scheme
    m = sb.result.bundle.manifest
    assert m.head.backend == "pynq" and m.trunk.backend == "tvm"
    assert [(s.name, s.shape, s.kind, dict(s.params)) for s in m.noise] == [
        ("head_in", (lap.cfg.d_model,), "dropout_mask", {"p": lap.cfg.head_p}),
        ("head_hidden", (lap.cfg.head_width,), "dropout_mask", {"p": lap.cfg.head_p})]
    # the same network: every parameter moved unchanged, the deterministic passes agree
    lp, mp = dict(lap.named_parameters()), dict(mc.named_parameters())
    assert sorted(lp) == sorted(mp) and all(torch.equal(lp[k], mp[k]) for k in lp)
    from edgeuq.compress.chain import tokenizer_of

    ids = torch.from_numpy(tokenizer_of(st.checkpoint).encode_batch(TEXTS))
    lap.set_sampling(False)
    mc.set_sampling(False)
    with torch.no_grad():
        err = float((lap(ids) - mc(ids)).abs().max())
    assert err <= 1e-6, err
    # the deploy network's density columns ride along: the trunk emits them, the FPGA head streams them past
    # (its graph slices the classifier columns) and the manifest names them for edgeuq calibrate
    dim = lap.cfg.d_model
    assert sb.density_columns == (dim, 2 * dim) and m.metadata["density_columns"] == [dim, 2 * dim]
    import json

    desc = json.loads((sb.result.bundle.root / m.head.file).read_text())
    assert desc["inputs"][0]["size"] == 2 * dim
    meta = m.metadata["lowering"]
    ev = Evidence.from_json(next(v for k, v in meta.items() if "head" in v["roles"])["evidence"])
    assert ev.how == "c-simulation" and ev.max_error is not None and ev.max_error <= ev.tolerance
    assert ev.latency_ms is None                          # simulated: never a board latency
    rep, toml = sb.result.report, _toml_budgets("pynq-z2")
    assert rep["latency_ms"]["measured"] is None and rep["latency_ms"]["ok"] is None
    assert all("estimate" in str(v).lower() for v in rep["estimates"].values())
    # fp32 bytes in closed form over the PyTorch parameters: the export folds the token-type table
    # (2 rows) into its one used row
    tt = mc.encoder.embeddings.token_type_embeddings.weight
    closed = 4 * (sum(p.numel() for p in mc.parameters()) - tt.numel() + tt.shape[1])
    assert rep["weight_bytes"]["measured"] == closed == _raw_bytes(sb.export.trunk_path, sb.export.head_path)
    assert rep["weight_bytes"]["budget"] == toml["weight_bytes"] and rep["weight_bytes"]["ok"] is (
        closed <= toml["weight_bytes"])
    # the Laplace head itself is refused by name of the noise it draws, before anything is lowered
    art = export_onnx(st.checkpoint, d / "laplace-onnx")
    with pytest.raises(HeadNoiseError, match=r"standard_normal"):
        compile_board("pynq-z2", art, d / "never", samples=4, workdir=d / "never-work")
    assert not (d / "never-work").exists()


def test_int8_trunk_weights_where_only_they_meet_the_weight_budget(student):
    import onnx

    from edgeuq.catalog import get_board
    from edgeuq.compress.chain import tokenizer_of
    from edgeuq.export import export_onnx

    st, d = student
    fp32 = _raw_bytes(*(lambda a: (a.trunk_path, a.head_path))(export_onnx(_deploy(st), d / "fp32-onnx")))
    base = get_board("x86-host")
    tight = dataclasses.replace(base, budgets=dataclasses.replace(base.budgets, weight_bytes=fp32 - 1))
    sb = _compile(st, d, tight, "int8", placement="default", isa_variants=())
    assert sb.weights == "int8" and sb.fp32_weight_bytes == fp32
    trunk = onnx.load(str(sb.export.trunk_path))
    assert "MatMulInteger" in {n.op_type for n in trunk.graph.node}
    assert any(t.data_type == onnx.TensorProto.INT8 for t in trunk.graph.initializer)
    rep = sb.result.report
    raw = _raw_bytes(sb.export.trunk_path, sb.export.head_path)
    assert rep["weight_bytes"]["measured"] == raw < fp32
    assert rep["weight_bytes"]["ok"] is (raw <= fp32 - 1)
    # the compiled int8 trunk was checked against ONNX Runtime's int8 graph by the rounding-flip rule (the float
    # tolerance + what flips do), recorded; the head (fp32) by the float tolerance
    ev = Evidence.from_json(next(iter(sb.result.bundle.manifest.metadata["lowering"].values()))["evidence"])
    assert ev.how == "native" and ev.max_error is not None and ev.max_error <= ev.tolerance
    rule = ev.detail["rule"]["trunk"]
    assert "flip_allowance" in rule and ev.detail["tolerance"]["trunk"] == pytest.approx(
        rule["float_tolerance"] + rule["flip_allowance"])
    assert ev.detail["max_abs_err"]["trunk"] <= ev.detail["tolerance"]["trunk"]
    assert "flip_allowance" not in ev.detail["rule"]["head"]
    # int8 weights change the numbers a little, not the answers
    from edgeuq_runtime import UncertaintyRuntime

    model = st.checkpoint.load_model().eval()
    model.set_sampling(False)
    ids = tokenizer_of(st.checkpoint).encode_batch(TEXTS)
    with torch.no_grad():
        want = torch.softmax(model(torch.from_numpy(ids)), -1).numpy()
    got = UncertaintyRuntime(sb.result.bundle.root, threads=1).deterministic(ids).probs
    err = float(np.abs(got - want).max())
    assert err <= 0.05, err
    # the int8 bundle's density feature: the fp32 PyTorch deploy model's, within what int8 moves. The bound:
    # per-tensor int8 weights (step max|W|/127) and uint8 activations (step range/255) hold each MatMul to
    # ~1 % of its output scale; through the tiny student's 2 layers x 6 quantised MatMuls that is a few % of
    # the features' scale: 5 % of max |feature| (the same bound as the probabilities above, 0.05)
    dim = model.cfg.d_model
    assert sb.density_columns == (dim, 2 * dim)
    ids_d, want_d, dep, wrong = _density_references(st)
    feats = UncertaintyRuntime(sb.result.bundle.root, threads=1).trunk_features(ids_d)[:, dim:]
    scale = float(np.max(np.abs(dep)))
    err_d = float(np.max(np.abs(feats - dep)))
    assert float(np.max(np.abs(dep - want_d))) <= 1e-5
    assert err_d <= 0.05 * scale, (err_d, scale)
    assert err_d > 1e-6                                        # int8 is in the path: the numbers moved
    assert not float(np.max(np.abs(feats - wrong))) <= err_d    # a feature of other layers is farther away
    # a budget that int8 misses too: int8 still, and the report says over
    tighter = dataclasses.replace(base, budgets=dataclasses.replace(base.budgets, weight_bytes=raw - 1))
    sb2 = _compile(st, d, tighter, "int8-over", placement="default", isa_variants=())
    assert sb2.weights == "int8" and sb2.result.report["weight_bytes"]["ok"] is False
    assert sb2.result.report["ok"] is False


def test_head_step_moves_the_weights_and_refuses_a_scheme_without_a_text_head(student):
    st, _ = student
    step = get_step("rehead")
    lap = st.checkpoint.load_model().eval()
    from edgeuq.compress.chain import tokenizer_of

    ids = tokenizer_of(st.checkpoint).encode_batch(TEXTS)
    res = step.apply(lap, StepData(x=ids), step_options(step, {"scheme": "mc_dropout"}))
    assert res.info["noise_kinds_before"] == ["standard_normal"] and res.info["noise_kinds_after"] == ["dropout_mask"]
    assert res.info["dropped_buffers"] and all(k.startswith("head.fc2.") for k in res.info["dropped_buffers"])
    assert res.info["deterministic_max_diff"] <= 1e-6
    back = step.apply(res.model, StepData(x=ids), step_options(step, {"scheme": "laplace"}))
    assert back.info["unfitted_buffers"] and not back.model.last_layer.fitted   # a posterior step fits it
    headless = next(n for n, s in SCHEMES.items() if s.text_head is None)
    with pytest.raises(ValueError, match="declares no text head"):
        step.apply(lap, StepData(x=ids), step_options(step, {"scheme": headless}))
