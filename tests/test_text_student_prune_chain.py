"""The text student's chain with ``prune`` on the bert trunk (layer choice by layer-mask Fisher,
then heads/FFN neurons by Kwon et al.'s steps) before ``vocab -> distill (hidden-state matching)
-> posterior``: a sliced encoder records which teacher layer each of its layers came from (checked
against the weights), the prune step calibrates on labelled windows only and cuts token batches to
their real tokens without changing the mask gradients (checked against the padded batches), and one
run end to end: tiny 3-layer text teacher -> chain -> bundle -> the device runtime's predict_text
agrees with the PyTorch student."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.compress.kwon import mask_gradients
from edgeuq.compress.slicing import drop_layers
from edgeuq.compress.steps import StepData, get_step, step_options
from edgeuq.compress.steps.prune import calibration_rows
from edgeuq.models import build_model
from edgeuq.models.bert import BertConfig
from edgeuq.models.config import bert_model_config

from text_teacher_support import TINY_CHAIN_OVERRIDES, padded_ids, tiny_text_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BERT = BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=24,
                  max_position_embeddings=16)


def _model(seed: int = 0, scheme: str = "mc_dropout"):
    torch.manual_seed(seed)
    return build_model(bert_model_config(BERT, 2, 12, scheme=scheme, head_hidden=8)).eval()


def _layer_state(model, j: int):
    prefix = f"encoder.encoder.layer.{j}."
    return {k[len(prefix):]: v for k, v in model.state_dict().items() if k.startswith(prefix)}


def test_a_sliced_encoder_records_the_teacher_layer_each_layer_came_from():
    model = _model()
    assert model.teacher_layers == (0, 1, 2, 3) and model.cfg.trunk_options.teacher_layers == ()
    a = drop_layers(model, (0, 2, 3))
    b = drop_layers(a, (0, 2))                      # a's layers 0 and 2 = the teacher's 0 and 3
    assert a.cfg.trunk_options.teacher_layers == (0, 2, 3)
    assert b.cfg.trunk_options.teacher_layers == (0, 3) and b.teacher_layers == (0, 3)
    for small in (a, b):                            # the reference: the weights themselves
        for j, i in enumerate(small.teacher_layers):
            got, want = _layer_state(small, j), _layer_state(model, i)
            assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got), (j, i)
    assert drop_layers(model, (0, 1, 2, 3)).cfg.trunk_options.teacher_layers == ()   # nothing dropped: unchanged


def test_prune_calibrates_on_labelled_windows_ordered_by_their_real_length():
    model = _model()
    x = padded_ids(30, BERT.vocab_size, 12, 0)
    y = np.where(np.arange(30) % 3 == 0, -1, np.arange(30) % 2)          # every third window unlabelled
    step = get_step("prune")
    opts = step_options(step, {"target_flops": 0.5, "rows": 12, "seed": 1})
    rows = calibration_rows(model, x, y, opts)
    assert len(rows) == 12 and len(set(rows.tolist())) == 12 and np.all(y[rows] >= 0)
    lengths = (x[rows] != 0).sum(1)
    assert np.all(np.diff(lengths) >= 0), lengths
    assert len(calibration_rows(model, x, y, step_options(step, {"target_flops": 0.5}))) == 20  # rows 0: all labelled
    assert len(calibration_rows(model, x, y, step_options(step, {"target_flops": 0.5, "labels": "model"}))) == 30
    with pytest.raises(ValueError, match="no labelled window"):
        calibration_rows(model, x, np.full(30, -1), opts)
    with pytest.raises(ValueError, match="rows must be an integer"):
        step_options(step, {"target_flops": 0.5, "rows": -1})


def test_mask_gradients_of_trimmed_token_batches_equal_the_padded_ones():
    model = _model()
    x = padded_ids(10, BERT.vocab_size, 12, 2)
    x[:, 9:] = 0                                                           # at most 9 real tokens
    y = np.arange(10) % 2
    assert model.trim_padding(torch.from_numpy(x)).shape[1] <= 9
    trimmed = mask_gradients(model, x, y, batch_size=4)
    model.trim_padding = lambda ids: ids                                   # the full padded batches
    padded = mask_gradients(model, x, y, batch_size=4)
    for a, b in zip([trimmed.layers, *trimmed.heads, *trimmed.neurons], [padded.layers, *padded.heads, *padded.neurons]):
        err = float(np.max(np.abs(a - b)))
        assert err <= 1e-4 * max(1.0, float(np.max(np.abs(b)))), err


# ----------------------------------------------------------------------------- end to end
#: the recipe's chain, prune included, sized for a tiny 3-layer teacher
STEPS = ["prune", "vocab", "distill", "posterior"]
OVERRIDES = [("prune", "keep_layers", 2), ("prune", "target_flops", 0.6), ("prune", "rows", 40),
             *TINY_CHAIN_OVERRIDES]


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    from edgeuq.text.student_chain import StudentOptions

    # one augmented copy per phrase: unlabelled windows the prune step must leave out of its Fisher
    return tiny_text_student(tmp_path_factory.mktemp("text-student-prune"), STEPS, OVERRIDES, layers=3,
                             options=StudentOptions(augment_copies=1))


def test_the_chain_keeps_layers_by_fisher_prunes_heads_and_neurons_and_records_the_layer_map(student):
    teacher, st = student
    assert [r["step"] for r in st.summary["steps"]] == STEPS
    info = st.summary["steps"][0]["info"]
    kept = info["kept_layers"]
    assert len(kept) == 2 and len(info["layer_fisher"]) == 3
    # the layer choice is the two largest layer-mask Fishers (brute force over the recorded Fisher)
    assert kept == sorted(np.argsort(-np.asarray(info["layer_fisher"]), kind="stable")[:2].tolist())
    assert info["calibration_rows"] == 40
    model = st.checkpoint.load_model().eval()
    t = teacher.load_model()
    assert model.cfg.depth == 2 and model.teacher_layers == tuple(kept)        # distill matched these layers
    widths = [(model.cfg.block_shape(i).heads, model.cfg.block_shape(i).ffn) for i in range(2)]
    full = (t.cfg.block_shape(0).heads, t.cfg.block_shape(0).ffn)
    assert all(h <= full[0] and f <= full[1] for h, f in widths) and widths != [full, full], (widths, full)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in t.parameters())
    assert st.summary["steps"][2]["options"]["hidden_weight"] > 0
    assert st.summary["transfer_rows"] == 2 * 60                               # 60 phrases + one copy each


def test_the_pruned_students_bundle_agrees_with_the_pytorch_student(student):
    from text_teacher_support import student_bundle_error

    _, st = student
    same, other = student_bundle_error(st)
    assert same <= 1e-5, same
    assert not other <= 1e-5, other                                         # the noise rows matter
