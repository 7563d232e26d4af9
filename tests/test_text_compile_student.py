"""A token student compiles like any other bundle: a tiny token transformer (int64 WordPiece ids,
Gather embedding, MatMul/Softmax attention, MC-dropout head; the architecture of
bench/text_teacher.py's from-scratch student) through ``edgeuq compile`` for x86-host (TVM,
checked natively), numerics against ONNX Runtime given the runtime's own noise, and its MLP head
as the hls4ml IP of pynq-z2 (C simulation). The text-student recipe itself (compile/text-student.toml)
is the compression chain over the teacher (edgeuq.text.student_chain; its boards are checked here)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from require_extras import require_extra

require_extra("tvm", "tvm")

from text_teacher_support import POSITIVE, tokenizer_json  # noqa: E402

from edgeuq.export import TOKENIZER_FILE, export_onnx  # noqa: E402
from edgeuq.lower import Evidence  # noqa: E402
from edgeuq.models import build_model  # noqa: E402
from edgeuq.compress.chain import chain_from_table, chain_table  # noqa: E402
from edgeuq.models import ModelConfig  # noqa: E402
from edgeuq.text.recipe import text_recipe  # noqa: E402
from edgeuq.text.wordpiece import wordpiece_from_tokenizer_json  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime, load_bundle  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [f"the film is {w}" for w in POSITIVE] + ["what year ?", "a dull , boring plot", ""]


def _token_student_config(vocab_size: int, max_length: int) -> ModelConfig:
    """bench/text_teacher.py's from-scratch token student (edgeuq.text.distill.student_config's defaults)."""
    return ModelConfig(input_length=max_length, num_classes=2, patch=1, embed="token", vocab_size=vocab_size,
                       d_model=64, heads=4, depth=2, ffn=128, dropout=0.1, stochastic_blocks=(), stochastic_head=True,
                       scheme="mc_dropout")


def test_the_recipe_is_a_chain_over_the_teacher_for_the_boards():
    rec = text_recipe()
    assert set(rec.boards) >= {"x86-host", "pynq-z2"}
    names = [s["name"] for s in rec.compress["steps"]]
    assert names == ["prune", "vocab", "distill", "posterior"]
    # every step's options read strictly (prune on the bert trunk included)
    chain = chain_from_table(chain_table(rec.compress, names))
    assert [s.name for s in chain] == names and chain[0].options.keep_layers == 3
    assert chain[2].options.hidden_weight > 0
    with pytest.raises(ValueError, match="not a text recipe"):
        text_recipe("bearing-demo")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    tok = wordpiece_from_tokenizer_json(tokenizer_json(), max_length=12)
    cfg = _token_student_config(tok.vocab_size, tok.max_length)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # spread the logits like a trained head's
        model.head.fc2.weight.mul_(8.0)
    root = tmp_path_factory.mktemp("text-student")
    ck = save_checkpoint(model, root / "checkpoint", ("negative", "positive"), 1.0, "none")
    tok.save(ck.directory / TOKENIZER_FILE)
    return model, tok, ck, export_onnx(ck, root / "onnx")


def _ort_probs(art, ids: np.ndarray, noise: dict, samples: int) -> np.ndarray:
    """The exported ONNX graphs under ONNX Runtime: trunk once, head on s-major tiles."""
    import onnxruntime as ort

    trunk = ort.InferenceSession(str(art.trunk_path), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(art.head_path), providers=["CPUExecutionProvider"])
    feats = trunk.run([art.feature_name], {art.input_name: ids})[0]
    logits = head.run([art.logits_name], {art.feature_name: np.tile(feats, (samples, 1)), **noise})[0]
    z = logits.astype(np.float64).reshape(samples, len(ids), -1)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_edgeuq_compile_lowers_the_text_student_for_x86_host_and_agrees_with_onnxruntime(student, tmp_path, capsys):
    from edgeuq.cli import main
    from edgeuq_runtime.noise import sample_noise_tiled

    model, tok, ck, art = student
    out = tmp_path / "bundle-x86"
    assert main(["compile", "--board", "x86-host", "--checkpoint", str(ck.directory), "--out", str(out),
                 "--samples", "4", "--tuning-db", str(tmp_path / "db"), "--workdir", str(tmp_path / "w"),
                 "--placement", "default", "--isa-variants", "none",  # the board's default placement: TVM,
                 "--quiet"]) == 0                                       # both graphs (generic library only)
    assert "budgets" in capsys.readouterr().out
    m = load_bundle(out, verify=True).manifest
    assert (m.trunk.backend, m.head.backend) == ("tvm", "tvm")
    assert (m.input.dtype, m.input.vocab_size, m.input.tokenizer) == ("int64", tok.vocab_size, TOKENIZER_FILE)
    ev = Evidence.from_json(m.metadata["lowering"]["tvm:x86-64"]["evidence"])
    assert ev.how == "native" and ev.max_error is not None and ev.max_error <= ev.tolerance
    rt = UncertaintyRuntime(out, threads=1)
    ids = rt.tokenize(TEXTS)
    assert np.array_equal(ids, tok.encode_batch(TEXTS))           # the bundled tokenizer is the teacher's
    got = rt.predict_text(TEXTS, samples=4, seed=7)
    noise = sample_noise_tiled(m.noise, 4, len(TEXTS), np.random.default_rng(7))  # what predict draws
    want = _ort_probs(art, ids, noise, 4)
    err = float(np.abs(got.samples - want).max())
    assert err <= 1e-4, err
    spread = float(np.abs(want - want.mean(0)).max())
    assert spread > 1e-3, "the MC-dropout noise must change the head's output (else the check is vacuous)"
    with torch.no_grad():
        det = torch.softmax(model(torch.from_numpy(ids)), -1).numpy()
    assert float(np.abs(rt.deterministic(ids).probs - det).max()) <= 1e-4
    # TVM's Gather is built in "fast" mode (no bounds checks): the runtime must refuse ids outside the vocabulary
    from edgeuq_runtime.errors import InputError

    bad = ids[:1].copy()
    bad[0, 1] = tok.vocab_size
    with pytest.raises(InputError, match=r"token ids must lie in \[0, 34\)"):
        rt.predict(bad, samples=2)


def test_the_text_students_head_goes_to_the_fpga_with_c_simulation_evidence(student, tmp_path):
    require_extra("hls4ml", "fpga")
    from edgeuq.lower.compile import compile_board

    _, tok, _, art = student
    res = compile_board("pynq-z2", art, tmp_path / "b", samples=4, tuning_root=tmp_path / "db")
    m = load_bundle(res.bundle.root, verify=True).manifest
    assert m.head.backend == "pynq" and m.trunk.backend == "tvm" and m.input.tokenizer == TOKENIZER_FILE
    hls = [v for k, v in m.metadata["lowering"].items() if k.startswith("hls4ml:")]
    assert len(hls) == 1
    ev = Evidence.from_json(hls[0]["evidence"])
    assert ev.how == "c-simulation" and ev.max_error is not None and ev.max_error <= ev.tolerance
    trunk = Evidence.from_json(m.metadata["lowering"]["tvm:cortex-a9"]["evidence"])
    assert trunk.max_error is None or trunk.max_error <= trunk.tolerance
