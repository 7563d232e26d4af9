"""The compression chain on a ``bert``-trunk model (the pretrained-encoder trunk of ModelConfig): the
``lowrank`` step factorises the encoder's and the head's linears, and its output goes the whole
chain like a signal model's (step -> save_checkpoint -> load_checkpoint, the config alone rebuilding
the factorised ranks -> ONNX export with the ``tokens`` input -> bundle -> device runtime, which agrees
with the step's PyTorch model on the runtime's noise stream). ``prune`` (Kwon et al.'s masks over
the encoder's post-norm layers, layer choice by layer-mask Fisher) goes the same chain: its
per-layer widths (``ModelConfig.blocks``) and kept depth rebuild from the checkpoint's config."""
import numpy as np
import pytest
import torch

from edgeuq.bundle import build_bundle
from edgeuq.compress.steps import StepData, get_step, step_options
from edgeuq.export import export_onnx
from edgeuq.models import build_model
from edgeuq.models.bert import BertConfig
from edgeuq.models.config import bert_model_config
from edgeuq.models.layers import LowRankLinear
from edgeuq.training import load_checkpoint, save_checkpoint
from edgeuq_runtime import UncertaintyRuntime

from chain import max_err, torch_reference
from text_teacher_support import padded_ids

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BERT = BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=16)
LENGTH, CLASSES, S, SEED, TOL = 12, ("a", "b", "c"), 4, 3, 1e-5


def _ids(n: int, seed: int) -> np.ndarray:
    return padded_ids(n, BERT.vocab_size, LENGTH, seed)


def _model():
    torch.manual_seed(0)
    return build_model(bert_model_config(BERT, len(CLASSES), LENGTH, scheme="mc_dropout", head_hidden=16)).eval()


def test_lowrank_step_goes_the_whole_chain_on_a_bert_trunk(tmp_path):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = StepData(x=_ids(16, 0), y=np.arange(16) % len(CLASSES))
    step = get_step("lowrank")
    out = step.apply(model, data, step_options(step, {"rank_fraction": 0.25, "prefixes": ["encoder.", "head."]})).model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "lowrank changed its input"
    ranks = dict(out.cfg.ranks)
    assert "encoder.encoder.layer.0.intermediate.dense" in ranks and "head.fc1" in ranks, ranks
    assert isinstance(out.get_submodule("encoder.encoder.layer.1.attention.self.query"), LowRankLinear)
    assert [s.to_json() for s in out.noise_specs()] == [s.to_json() for s in model.noise_specs()]

    _whole_chain(model, out, tmp_path, "bert-lowrank")


def _whole_chain(model, out, tmp_path, name: str) -> None:
    """``out`` (a step's output from ``model``) -> checkpoint -> load_model -> ONNX -> bundle -> runtime,
    which agrees with ``out`` in PyTorch on the runtime's noise stream and not with ``model``."""
    save_checkpoint(out, tmp_path / "ck", CLASSES, 1.0, normalization="none")
    loaded = load_checkpoint(tmp_path / "ck")
    assert loaded.config == out.cfg and loaded.config.trunk == "bert"
    back = loaded.load_model()
    want, got = out.state_dict(), back.state_dict()
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)

    art = export_onnx(loaded, tmp_path / "onnx")
    assert art.input_name == "tokens" and art.input_dtype == "int64" and art.feature_shape == (32,)
    bundle = build_bundle(art, tmp_path / "bundle", name, "0.1.0", default_samples=S).root
    x = _ids(5, 2)
    got = UncertaintyRuntime(bundle).predict(x, samples=S, seed=SEED).samples
    want = torch_reference(out, art, x, S, SEED)
    assert got.shape == want.shape == (S, 5, len(CLASSES))
    err = max_err(got, want)
    assert err <= TOL, err
    assert not max_err(got, torch_reference(out, art, x, S, SEED + 1)) <= TOL  # another noise stream differs
    # the step's model is not its input (else the agreement above says nothing about the step)
    assert not max_err(want, torch_reference(model, art, x, S, SEED)) <= 1e-4


def test_prune_step_goes_the_whole_chain_on_a_bert_trunk(tmp_path):
    torch.manual_seed(1)
    model = build_model(bert_model_config(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=3,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     max_position_embeddings=16),
                                          len(CLASSES), LENGTH, scheme="mc_dropout", head_hidden=16)).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = StepData(x=_ids(24, 0), y=np.arange(24) % len(CLASSES))
    step = get_step("prune")
    res = step.apply(model, data, step_options(step, {"target_flops": 0.5, "keep_layers": 2}))
    out = res.model
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "prune changed its input"
    assert out.cfg.depth == 2 and len(res.info["kept_layers"]) == 2 and len(res.info["layer_fisher"]) == 3
    assert [b.heads for b in out.cfg.blocks] == res.info["heads_kept"] and out.cfg.blocks
    assert res.info["block_macs_after"] <= 0.5 * res.info["block_macs_before"]
    assert [s.to_json() for s in out.noise_specs()] == [s.to_json() for s in model.noise_specs()]

    _whole_chain(model, out, tmp_path, "bert-pruned")
