"""The text student through the compression chain (edgeuq.text.student_chain; steps vocab, distill
with hidden-state matching, posterior), on tiny BERTs: each piece against an independent reference
(set arithmetic for the kept vocabulary, the Eckart-Young error for the factorised table, a loop
over tokens for the hidden-state loss), and one run end to end: tiny text teacher -> chain ->
bundle -> the device runtime's predict_text agrees with the PyTorch student, and a word the
vocabulary lost maps to [UNK] on the device as on the host."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuq.compress.chain import data_in_vocabulary
from edgeuq.compress.distill import DistillConfig, distill_loss, distill_model
from edgeuq.compress.steps import StepData, get_step, step_options
from edgeuq.compress.steps.vocab import kept_token_ids
from edgeuq.compress.transfer import TransferSet, label_with_model
from edgeuq.models import ModelConfig, build_model
from edgeuq.models.bert import BertConfig
from edgeuq.models.config import bert_model_config
from edgeuq.training.config import TrainConfig
from edgeuq_runtime.wordpiece import WordPieceTokenizer

from text_teacher_support import TINY_CHAIN_OVERRIDES, tiny_text_student

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "movie", "film", "plot", "great", "dull",
         "awful", "the", "was", "a", "g", "o", "d", "##o", "##d", "##s", "!")
TOK = WordPieceTokenizer(vocab=WORDS, max_length=10, special_tokens=WORDS[:5])
CORPUS = ["good movie", "bad film", "the plot was dull", "a good film !", "the movie was bad"]


def _signal_model():
    return build_model(ModelConfig(input_length=32, num_classes=2, patch=8, d_model=8, heads=2, depth=1, ffn=8,
                                   stochastic_blocks=(), stochastic_head=True))


def _teacher(layers: int = 2, scheme: str = "mc_dropout", seed: int = 0):
    bert = BertConfig(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=24, max_position_embeddings=16)
    torch.manual_seed(seed)
    return build_model(bert_model_config(bert, 2, TOK.max_length, scheme=scheme, head_hidden=8)).eval()


def _vocab(model, rank=0, trim=False, corpus=CORPUS):
    step = get_step("vocab")
    x = TOK.encode_batch(corpus)
    return step.apply(model, StepData(x=x, tokenizer=TOK), step_options(step, {"rank": rank, "trim_positions": trim}))


def _new_tokenizer(res, tmp_path) -> WordPieceTokenizer:
    res.files["tokenizer.json"](tmp_path / "tokenizer.json")
    return WordPieceTokenizer.load(tmp_path / "tokenizer.json")


def test_vocab_keeps_the_corpus_tokens_the_specials_and_the_single_characters():
    ids = TOK.encode_batch(CORPUS)
    used = {WORDS[i] for i in np.unique(ids)}
    single = {t for t in WORDS if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    want = [t for t in WORDS if t in used | single | set(WORDS[:5])]       # in the original order
    assert [WORDS[i] for i in kept_token_ids(TOK, ids)] == want
    assert "great" not in want and "awful" not in want and "good" in want  # the corpus decides


def test_pruned_vocabulary_gives_the_same_outputs_on_the_corpus_and_unk_elsewhere(tmp_path):
    teacher = _teacher()
    res = _vocab(teacher, trim=True)
    new_tok = _new_tokenizer(res, tmp_path)
    student = res.model.eval()
    assert student.cfg.vocab_size == new_tok.vocab_size < len(WORDS)
    assert student.cfg.trunk_options.max_positions == TOK.max_length
    texts = CORPUS + ["good plot !"]
    with torch.no_grad():
        a = teacher(torch.from_numpy(TOK.encode_batch(texts)))
        b = student(torch.from_numpy(new_tok.encode_batch(texts)))
    err = float(torch.max(torch.abs(a - b)))
    assert err <= 1e-6, err                                    # same pieces, same rows: the same network
    with pytest.raises(ValueError, match="longer than the position table"):   # trimmed to max_length
        student(torch.ones(1, TOK.max_length + 1, dtype=torch.int64))
    # "great" was pruned: not a kept piece, its characters g + ##r... are not all kept -> [UNK]
    assert new_tok.tokens("great film") == ["[UNK]", "film"]
    assert TOK.tokens("great film") == ["great", "film"]
    assert new_tok.tokens("good") == ["good"] and new_tok.tokens("god") == ["g", "##o", "##d"]


def test_factorised_word_table_is_the_best_rank_r_approximation_of_the_kept_rows():
    teacher = _teacher()
    r = 4
    res = _vocab(teacher, rank=r)
    e = res.model.encoder.embeddings
    keep = kept_token_ids(TOK, TOK.encode_batch(CORPUS))
    table = teacher.encoder.embeddings.word_embeddings.weight.detach().double().numpy()[keep]
    approx = (e.word_low.weight.detach().double() @ e.word_proj.weight.detach().double().T).numpy()
    s = np.linalg.svd(table, compute_uv=False)
    eckart_young = float(np.sqrt((s[r:] ** 2).sum()))          # the least possible error at rank r
    err = float(np.linalg.norm(table - approx))
    assert abs(err - eckart_young) <= 1e-4 * max(1.0, eckart_young), (err, eckart_young)
    assert abs(res.info["embedding_svd_rel_error"] - eckart_young / float(np.sqrt((s ** 2).sum()))) <= 1e-5
    assert res.info["embedding_params_after"] < res.info["embedding_params_before"]
    with pytest.raises(ValueError, match="rank"):
        _vocab(teacher, rank=16)
    with pytest.raises(ValueError, match="BERT token embedding"):
        get_step("vocab").apply(_signal_model(), StepData(x=np.zeros((2, 32), np.float32), tokenizer=TOK),
                                step_options(get_step("vocab"), {}))


def test_the_chain_maps_ids_into_the_new_vocabulary_and_back_for_the_teacher(tmp_path):
    res = _vocab(_teacher())
    new_tok = _new_tokenizer(res, tmp_path)
    x = TOK.encode_batch(CORPUS)
    seen = []
    data = StepData(x=x, x_val=x[:2], tokenizer=TOK, teacher=lambda ids, s, seed: seen.append(ids) or ids,
                    teacher_hidden=lambda ids: seen.append(ids) or ids)
    mapped = data_in_vocabulary(data, new_tok)
    # brute force: token string by string
    want = np.array([[new_tok.vocab.index(WORDS[i]) for i in row] for row in x])
    assert np.array_equal(mapped.x, want) and mapped.tokenizer is new_tok
    assert np.array_equal(mapped.teacher(mapped.x, 2, 0), x)              # the teacher reads its own ids
    assert torch.equal(mapped.teacher_hidden(torch.from_numpy(mapped.x)), torch.from_numpy(x))
    with pytest.raises(ValueError, match="'great' is not in the model's vocabulary"):
        data_in_vocabulary(StepData(x=TOK.encode_batch(["great"]), tokenizer=TOK), new_tok)
    assert data_in_vocabulary(data, TOK).x is x                            # same vocabulary: unchanged


def _cut(teacher, keep):
    """A student holding the teacher's layers ``keep`` (its provenance in trunk_options.teacher_layers)."""
    cfg = dataclasses.replace(teacher.cfg, depth=len(keep),
                              trunk_options=dataclasses.replace(teacher.cfg.trunk_options, teacher_layers=tuple(keep)))
    student = build_model(cfg)
    state = {k: v for k, v in teacher.state_dict().items() if ".encoder.layer." not in k}
    for j, i in enumerate(keep):
        state.update({k.replace(f".layer.{i}.", f".layer.{j}."): v for k, v in teacher.state_dict().items()
                      if f".encoder.layer.{i}." in k})
    student.load_state_dict(state, strict=True)
    return student.eval()


def test_hidden_matching_maps_each_student_layer_to_the_teacher_layer_it_was_cut_from():
    teacher = _teacher(layers=3)
    student = _cut(teacher, (2,))
    with torch.no_grad():   # move the student off the teacher, so every term is non-zero
        for p in student.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.from_numpy(TOK.encode_batch(CORPUS))
    probs = torch.from_numpy(label_with_model(teacher, ids.numpy(), 2, 0))
    y = torch.full((len(ids),), -1)
    cfg = DistillConfig(loss="kl", hidden_weight=0.5)
    hidden = lambda x: teacher.hidden_states(x)[0]  # noqa: E731
    with torch.no_grad():
        got = float(distill_loss(student, ids, probs, y, cfg, teacher_hidden=hidden)
                    - distill_loss(student, ids, probs, y, dataclasses.replace(cfg, hidden_weight=0.0)))
        s_h, _ = student.hidden_states(ids)
        t_h, _ = teacher.hidden_states(ids)
    # brute force: token by token; student [embeddings, layer 0] vs teacher [embeddings, layer 2]
    terms = []
    for s, t in ((s_h[0], t_h[0]), (s_h[1], t_h[3])):
        sq, n = 0.0, 0
        for b in range(len(ids)):
            for tpos in range(ids.shape[1]):
                if int(ids[b, tpos]) != 0:
                    sq += float(((s[b, tpos] - t[b, tpos]) ** 2).sum())
                    n += s.shape[-1]
        terms.append(sq / n)
    want = 0.5 * float(np.mean(terms))
    assert abs(got - want) <= 1e-5 * max(1.0, want), (got, want)
    assert student.teacher_layers == (2,) and teacher.teacher_layers == (0, 1, 2)


def test_density_matching_pulls_the_mean_of_the_student_layers_token_means_to_the_teacher_feature():
    teacher = _teacher(layers=3)
    student = _cut(teacher, (0, 2))
    with torch.no_grad():
        for p in student.encoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.from_numpy(TOK.encode_batch(CORPUS))
    probs = torch.from_numpy(label_with_model(teacher, ids.numpy(), 2, 0))
    y = torch.full((len(ids),), -1)
    target = torch.randn(len(ids), 16, generator=torch.Generator().manual_seed(3))
    cfg = DistillConfig(loss="kl", density_weight=0.7)
    with torch.no_grad():
        got = float(distill_loss(student, ids, probs, y, cfg, teacher_density=lambda x: target[:len(x)])
                    - distill_loss(student, ids, probs, y, dataclasses.replace(cfg, density_weight=0.0)))
        s_h, _ = student.hidden_states(ids)
    # brute force: per row, the token mean of each layer output (not the embeddings), averaged over layers
    sq = 0.0
    for b in range(len(ids)):
        real = [t for t in range(ids.shape[1]) if int(ids[b, t]) != 0]
        z = sum(s_h[j][b, real].mean(0) for j in (1, 2)) / 2
        sq += float(((z - target[b]) ** 2).sum())
    spread = float(((target - target.mean(0)) ** 2).sum()) / len(ids)
    want = 0.7 * (sq / len(ids)) / spread
    assert abs(got - want) <= 1e-5 * max(1.0, want), (got, want)
    # it is what the deployed student's density feature (frozen_avg over all its layers) emits
    from edgeuq.text.student_chain import with_ood_features

    with torch.no_grad():
        emitted = with_ood_features(student, "frozen_avg").trunk(ids)[:, 16:]
        z_all = torch.stack([torch.stack([s_h[j][b, [t for t in range(ids.shape[1]) if int(ids[b, t]) != 0]].mean(0)
                                          for b in range(len(ids))]) for j in (1, 2)]).mean(0)
    assert float((emitted - z_all).abs().max()) <= 1e-5


def test_density_matching_is_off_by_default_and_needs_the_teacher_feature():
    assert DistillConfig().density_weight == 0.0
    from edgeuq.compress.steps.distill import Distill

    assert Distill.Options().density_weight == 0.0
    with pytest.raises(ValueError, match="density_weight must be a finite number"):
        DistillConfig(density_weight=float("nan"))
    teacher = _teacher()
    x = TOK.encode_batch(CORPUS)
    ts = TransferSet(x, label_with_model(teacher, x, 2, 0))
    cfg = DistillConfig(density_weight=1.0, train=TrainConfig(epochs=1, batch_size=4))
    with pytest.raises(ValueError, match="teacher's density feature"):
        distill_model(_cut(teacher, (1,)), ts, np.full(len(x), -1), ts, np.full(len(x), -1), cfg, progress=False)
    step = get_step("distill")
    data = StepData(x=x, y=np.full(len(x), -1), x_val=x, y_val=np.full(len(x), -1), tokenizer=TOK,
                    teacher=lambda ids, s, seed: label_with_model(teacher, ids, s, seed))
    with pytest.raises(ValueError, match="StepData.teacher_density"):
        step.apply(_cut(teacher, (1,)), data, step_options(step, {"density_weight": 1.0, "epochs": 1}))


def test_teacher_layers_round_trip_and_are_omitted_when_empty():
    teacher = _teacher()
    assert "teacher_layers" not in teacher.cfg.to_dict()["trunk_options"]   # older configs keep their digests
    student = _cut(teacher, (1,))
    d = student.cfg.to_dict()
    assert d["trunk_options"]["teacher_layers"] == [1]
    assert ModelConfig.from_dict(json.loads(json.dumps(d))) == student.cfg
    with pytest.raises(ValueError, match="teacher_layers names 2 layers for depth 1"):
        dataclasses.replace(student.cfg, trunk_options=dataclasses.replace(student.cfg.trunk_options,
                                                                           teacher_layers=(0, 1)))


def test_hidden_matching_is_off_by_default_and_refused_for_a_trunk_without_layers():
    assert DistillConfig().hidden_weight == 0.0
    from edgeuq.compress.steps.distill import Distill

    assert Distill.Options().hidden_weight == 0.0
    signal = _signal_model()
    ts = TransferSet(np.zeros((4, 32), np.float32), np.full((2, 4, 2), 0.5, np.float32))
    cfg = DistillConfig(hidden_weight=1.0, train=TrainConfig(epochs=1, batch_size=4))
    with pytest.raises(ValueError, match="trunk 'signal' has none"):
        distill_model(signal, ts, np.full(4, -1), ts, np.full(4, -1), cfg, progress=False,
                      teacher_hidden=lambda x: [])
    with pytest.raises(ValueError, match="teacher's hidden states"):
        distill_model(signal, ts, np.full(4, -1), ts, np.full(4, -1), cfg, progress=False)


def test_posterior_step_refits_a_laplace_head_and_passes_other_heads_unchanged():
    step = get_step("posterior")
    x = TOK.encode_batch(CORPUS * 4)
    y = np.arange(len(x)) % 2
    data = StepData(x=x, y=y, x_val=x[:8], y_val=y[:8])
    mc = _teacher()
    res = step.apply(mc, data, step_options(step, {}))
    assert res.info["fitted"] is False
    assert all(torch.equal(a, b) for a, b in zip(mc.state_dict().values(), res.model.state_dict().values()))
    lap = _teacher(scheme="laplace")
    before = {k: v.clone() for k, v in lap.state_dict().items()}
    res = step.apply(lap, data, step_options(step, {"samples": 8}))
    assert res.info["fitted"] is True and res.info["n_train"] == len(x)
    nll = res.info["val_nll"]
    assert res.info["prior_precision"] == res.info["grid"][int(np.nanargmin(nll))]   # chosen by validation NLL
    after = res.model.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert changed and all(k.startswith("head.fc2.") for k in changed), changed     # only the posterior moved
    assert all(torch.equal(before[k], v) for k, v in lap.state_dict().items())       # its input untouched


# ----------------------------------------------------------------------------- end to end
#: the recipe's chain without prune (with prune: tests/test_text_student_prune_chain.py), sized for a tiny model
STEPS = ["vocab", "distill", "posterior"]
OVERRIDES = list(TINY_CHAIN_OVERRIDES)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("text-student")
    return (*tiny_text_student(d, STEPS, OVERRIDES), d)


def test_text_student_chain_bundle_agrees_with_the_pytorch_student(student):
    from edgeuq.compress.chain import tokenizer_of
    from text_teacher_support import student_bundle_error

    teacher, st, _ = student
    assert [r["step"] for r in st.summary["steps"]] == ["vocab", "distill", "posterior"]
    assert st.summary["steps"][2]["info"]["fitted"] is True
    model = st.checkpoint.load_model().eval()
    tok = tokenizer_of(st.checkpoint)
    assert model.cfg.vocab_size == tok.vocab_size < teacher.load_model().cfg.vocab_size
    assert model.cfg.trunk_options.embedding_rank == 8
    same, other = student_bundle_error(st)
    assert same <= 1e-5, same
    assert not other <= 1e-5, other                                         # the noise rows matter


def test_a_word_outside_the_pruned_vocabulary_is_unk_on_the_device_and_on_the_host(student):
    from edgeuq.compress.chain import tokenizer_of
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.wordpiece import WordPieceTokenizer as WP

    teacher, st, _ = student
    full = WP.load(teacher.file_path("tokenizer.json"))
    small = tokenizer_of(st.checkpoint)
    # "capital" is in the teacher's vocabulary but no training phrase uses it
    assert "capital" in full.vocab and "capital" not in small.vocab
    text = ["the capital film"]
    assert full.tokens(text[0])[1] == "capital"
    host = small.encode_batch(text)
    device = UncertaintyRuntime(st.bundle).tokenize(text)
    assert np.array_equal(host, device) and int(host[0, 2]) == small.unk_id


def test_the_bundled_student_also_emits_the_avg_avg_feature_of_all_its_layers(student):
    """The recipe's ``ood_features = "frozen_avg"``: the bundle's trunk output is [classifier features |
    mean over every student layer of its masked token mean], against edgeuq.text.ood's own pooling loop
    (layer_pooled + avg_avg) on the chain's last checkpoint; the deploy checkpoint is that network."""
    from edgeuq.compress.chain import tokenizer_of
    from edgeuq.text.ood import avg_avg, layer_pooled
    from edgeuq.text.student_chain import DEPLOY_DIR
    from edgeuq.training import load_checkpoint
    from edgeuq_runtime import UncertaintyRuntime

    _, st, d = student
    model = st.checkpoint.load_model().eval()
    tok = tokenizer_of(st.checkpoint)
    texts = ["the film is good", "a very dull plot", "what city is the capital ?", "superb !"]
    ids = tok.encode_batch(texts)
    lp = layer_pooled(model.encoder, ids)
    want = np.concatenate([lp[:, -1], avg_avg(lp)], axis=1)
    rt = UncertaintyRuntime(st.bundle)
    got = rt.trunk_features(ids)
    assert got.shape == want.shape and rt.manifest.metadata["density_columns"] == [lp.shape[-1], 2 * lp.shape[-1]]
    err = float(np.max(np.abs(got - want)))
    assert err <= 1e-5, err
    assert not float(np.max(np.abs(avg_avg(lp[:, :-1]) - want[:, lp.shape[-1]:]))) <= 1e-5   # every layer counts
    deploy = load_checkpoint(d / "student" / DEPLOY_DIR)
    assert st.summary["deploy_checkpoint"] == str(deploy.directory)
    assert (deploy.directory / "tokenizer.json").is_file()
    with torch.no_grad():
        dep = deploy.load_model().eval().trunk(torch.from_numpy(ids)).numpy()
    assert float(np.max(np.abs(dep - want))) <= 1e-5


def test_calibrating_a_text_bundle_leaves_fit_texts_equal_to_a_calibration_text_out(student, tmp_path):
    """SST-2 repeats phrases: calibrate_text_bundle drops the fit texts whose ids equal a calibration
    text's (counted by a brute-force comparison of the tokenized rows; one differs only in case, so
    only its ids show the repeat) instead of raising; calibrate_bundle on the same rows refuses."""
    from text_teacher_support import sentiment_rows

    from edgeuq.calibrate.fit import FitOverlapError, calibrate_bundle, calibrate_text_bundle
    from edgeuq_runtime import UncertaintyRuntime

    _, st, _ = student
    cal = sentiment_rows(20, 31)
    fit = sentiment_rows(40, 32) + [cal[0], cal[3], (cal[5][0].upper(), cal[5][1])]
    label = {"thumbs down": 0, "Thumbs-Up": 1}
    cal_t, cal_y = [t for t, _ in cal], [label[y] for _, y in cal]
    fit_t, fit_y = [t for t, _ in fit], [label[y] for _, y in fit]
    rt = UncertaintyRuntime(st.bundle)
    cal_rows = {tuple(r) for r in rt.tokenize(cal_t).tolist()}
    want = sum(tuple(r) in cal_rows for r in rt.tokenize(fit_t).tolist())
    assert want >= 3
    res, dropped = calibrate_text_bundle(st.bundle, cal_t, cal_y, fit_t, fit_y, out_dir=tmp_path / "cal")
    assert dropped == want
    assert res.calibration.density_fit.n == len(fit_t) - want and res.calibration.density_fit.overlap == 0
    with pytest.raises(FitOverlapError):
        calibrate_bundle(st.bundle, rt.tokenize(cal_t), np.array(cal_y), rt.tokenize(fit_t), np.array(fit_y),
                         out_dir=tmp_path / "refused")


def test_the_student_refuses_density_features_it_has_no_layers_for():
    from edgeuq.text.student_chain import StudentOptions

    with pytest.raises(ValueError, match="ood_features must be one of"):
        StudentOptions(ood_features="avgavg")          # a pruned encoder has no pretrained copies of its layers


def test_rerun_of_the_text_student_reuses_every_step(student):
    from edgeuq.text.student_chain import build_text_student

    teacher, st, d = student
    again = build_text_student(teacher.directory, d / "student", "text-student", steps=STEPS, overrides=OVERRIDES,
                               log=lambda m: None)
    assert all(r["cached"] for r in again.summary["steps"]) and again.checkpoint.digest == st.checkpoint.digest


def test_the_recipes_transfer_set_table_is_read_strictly():
    from edgeuq.text.student_chain import StudentOptions, student_options_from

    assert student_options_from({"transfer": 5, "augment_copies": 1}) == StudentOptions(transfer=5, augment_copies=1)
    with pytest.raises(ValueError, match=r"train\.transfr: unknown text student option"):
        student_options_from({"transfr": 5})
    with pytest.raises(ValueError, match="p_mask must lie in"):
        StudentOptions(p_mask=1.5)


def test_the_cli_runs_the_chain_it_is_given(student, capsys):
    from edgeuq.cli import main

    teacher, _, d = student
    out = d / "cli"
    assert main(["text-student", "--teacher", str(teacher.directory), "--out", str(out), "--steps", "vocab,posterior",
                 "--option", "vocab.rank=8", "--option", "posterior.samples=8", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "text_student.json").read_text())
    assert [r["step"] for r in summary["steps"]] == ["vocab", "posterior"] and "student bundle" in printed
    assert summary["steps"][0]["options"]["rank"] == 8 and Path(summary["bundle"]).is_dir()
    # an unknown option is refused by name before anything runs
    assert main(["text-student", "--teacher", str(teacher.directory), "--out", str(d / "cli-bad"), "--steps", "vocab",
                 "--option", "vocab.rnak=8"]) == 2
    assert "rnak" in capsys.readouterr().err and not (d / "cli-bad").exists()


def test_distillation_trims_a_batch_to_its_real_tokens_without_changing_the_loss():
    teacher = _teacher()
    student = _cut(teacher, (1,))
    ids = torch.from_numpy(TOK.encode_batch(["good movie", "bad film !"]))       # max_length 10, 5 real at most
    assert student.trim_padding(ids).shape == (2, 5)
    probs = torch.from_numpy(label_with_model(teacher, ids.numpy(), 2, 0))
    y = torch.full((2,), -1)
    cfg = DistillConfig(loss="kl", hidden_weight=1.0)
    hidden = lambda x: teacher.hidden_states(x)[0]  # noqa: E731
    with torch.no_grad():
        trimmed = float(distill_loss(student, ids, probs, y, cfg, teacher_hidden=hidden))
        student.trim_padding = lambda x: x                                        # the full padded batch
        full = float(distill_loss(student, ids, probs, y, cfg, teacher_hidden=hidden))
    assert abs(trimmed - full) <= 1e-5 * max(1.0, abs(full)), (trimmed, full)


def test_length_buckets_batch_rows_of_similar_length_and_keep_every_row_once():
    """epoch_batches: without buckets exactly the slices of the seeded permutation (the old batches);
    with buckets every row once, ceil(n / batch) batches, each batch a run of its group's rows sorted
    by length (brute force: the group of rows it came from, sorted), and far less padding."""
    from edgeuq.compress.distill import epoch_batches

    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 60, size=1000)
    n, bs, k = len(lengths), 32, 5
    plain = epoch_batches(n, bs, np.random.default_rng(3), lengths, 0)
    perm = np.random.default_rng(3).permutation(n)
    assert len(plain) == -(-n // bs) and all(np.array_equal(b, perm[i * bs:(i + 1) * bs]) for i, b in enumerate(plain))
    got = epoch_batches(n, bs, np.random.default_rng(3), lengths, k)
    assert len(got) == -(-n // bs)
    assert sorted(np.concatenate(got).tolist()) == list(range(n))
    want = []
    for g in range(0, n, k * bs):
        grp = sorted(perm[g:g + k * bs].tolist(), key=lambda i: lengths[i])   # stable, as argsort(kind="stable")
        want += [tuple(grp[i:i + bs]) for i in range(0, len(grp), bs)]
    assert sorted(tuple(b.tolist()) for b in got) == sorted(want)
    assert [tuple(b.tolist()) for b in got] != want                          # the batches are shuffled

    def work(batches):
        return sum(len(b) * lengths[b].max() for b in batches)

    assert work(got) < 0.7 * work(plain)


def test_distillation_with_length_buckets_trains_on_every_row(monkeypatch):
    """distill_model with length_buckets: the batches it trains on are epoch_batches' over the
    student's real lengths (recorded through distill_loss)."""
    import edgeuq.compress.distill as dmod
    from edgeuq.compress.distill import epoch_batches

    teacher = _teacher(layers=1)
    x = TOK.encode_batch(CORPUS * 8)
    ts = TransferSet(x, label_with_model(teacher, x, 4))
    seen = []
    real = dmod.distill_loss

    def spy(model, xb, *args, **kw):
        seen.append(xb.clone())
        return real(model, xb, *args, **kw)

    monkeypatch.setattr(dmod, "distill_loss", spy)
    cfg = DistillConfig(loss="kl", length_buckets=2, train=TrainConfig(epochs=1, batch_size=4, lr=1e-3, patience=1))
    distill_model(_teacher(layers=1, seed=1), ts, np.full(len(x), -1), ts, np.full(len(x), -1), cfg)
    steps = -(-len(x) // 4)
    # the reference: epoch_batches over the lengths counted here, with the loop's seeded generator
    want = epoch_batches(len(x), 4, np.random.default_rng(cfg.train.seed), (x != 0).sum(1), 2)
    assert len(seen) > steps                             # training calls first, then validation
    for got, idx in zip(seen[:steps], want):
        assert torch.equal(got, torch.from_numpy(x[idx]))


def test_picking_a_text_bundles_device_rule_on_validation_texts(student, tmp_path):
    """calibrate_text_bundle, then pick_text_rule on validation texts (other sentiment rows vs. questions and
    shuffled / cut rows, none of them calibration or fit texts): every candidate's AUROC equals a brute-force
    recomputation (Mondrian p-values counted against the stored per-class calibration scores, the combination
    in closed form, a pairwise Mann-Whitney count), the pick is the best of them, and the bundle then runs it
    (its calibration's parts / rule / weights; Calibrated's combined p-value = the candidate's)."""
    from text_teacher_support import questions, sentiment_rows

    from edgeuq.calibrate.fit import CalibrationOptions, calibrate_text_bundle
    from edgeuq.calibrate.rule import RulePickOptions, all_parts_calibrated, pick_text_rule, rule_candidates
    from edgeuq.calibrate.scores import score_windows
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.calibration import Calibrated

    _, st, _ = student
    label = {"thumbs down": 0, "Thumbs-Up": 1}
    cal, fit, val = sentiment_rows(60, 41), sentiment_rows(80, 42), sentiment_rows(40, 43)
    dest = tmp_path / "cal"
    res, _ = calibrate_text_bundle(st.bundle, [t for t, _ in cal], [label[y] for _, y in cal],
                                   [t for t, _ in fit], [label[y] for _, y in fit],
                                   CalibrationOptions(samples=4, min_per_class=10), out_dir=dest)
    parts = res.calibration.pvalues.parts
    assert parts == ("epistemic", "total", "density")
    used = {t for t, _ in cal + fit}
    val_t = [t for t, _ in val if t not in used]
    rng = np.random.default_rng(0)
    shifted = {"questions": questions(30, 44),
               "shuffled": [" ".join(rng.permutation(t.split()[::-1])) + " ?" for t, _ in sentiment_rows(30, 45)]}
    opts = RulePickOptions(samples=4, seed=3)
    pick = pick_text_rule(dest, val_t, shifted, opts)

    # brute force from the stored calibration scores (the same seeds as the pick: seed + 11, + 12, + 13)
    rt = UncertaintyRuntime(dest)
    allc = all_parts_calibrated(rt.bundle)
    cal_sc = {p: allc.pvalue_scores[p] for p in parts}

    def brute_p(texts, seed):
        sc = score_windows(rt, rt.tokenize(texts), 4, seed, calibrated=allc)
        given = {"epistemic": sc.epistemic, "total": sc.total, "density": sc.density}
        out = {}
        for p in parts:
            per, pooled = cal_sc[p]
            out[p] = np.array([(1 + np.sum((pooled if per[k] is None else per[k]) >= v))
                               / ((pooled if per[k] is None else per[k]).size + 1)
                               for v, k in zip(given[p], sc.prediction)])
        return out

    p_in = brute_p(val_t, 3 + 11)
    outs = [brute_p(shifted["questions"], 3 + 12), brute_p(shifted["shuffled"], 3 + 13)]
    p_out = {p: np.concatenate([o[p] for o in outs]) for p in parts}

    def combine(c, pv):
        P = np.stack([pv[p] for p in c.parts], 1)
        if c.rule == "min":
            return np.minimum(1.0, len(c.parts) * P.min(1))
        return np.minimum(1.0, (P / np.array(c.weights)).min(1))

    def brute_auroc(a, b):
        d = b[:, None] - a[None, :]
        return float(((d > 0).sum() + 0.5 * (d == 0).sum()) / d.size)

    cands = rule_candidates(parts, ("min", "weighted"))
    assert [r["parts"] for r in pick.table] == [list(c.parts) for c in cands]
    aurocs = [brute_auroc(-np.log(combine(c, p_in)), -np.log(combine(c, p_out))) for c in cands]
    for row, want in zip(pick.table, aurocs):
        assert abs(row["auroc"] - want) <= 1e-9, (row, want)
    assert abs(pick.auroc - max(aurocs)) <= 1e-9 and set(pick.per_set) == set(shifted)
    assert max(aurocs) - min(aurocs) > 0.01    # the candidates differ, so the brute-force comparison can fail
    # the bundle runs the pick
    pv = Calibrated.from_bundle(UncertaintyRuntime(dest).bundle).cal.pvalues
    assert pv.parts == pick.parts and pv.rule == pick.rule and pv.weights == pick.weights
    dev = Calibrated.from_bundle(UncertaintyRuntime(dest).bundle)
    got = dev.combined_pvalue({p: p_in[p] for p in pick.parts})
    assert float(np.max(np.abs(got - combine(pick.candidate, p_in)))) <= 1e-12
    # a weighted pick can be forced (rules = weighted only, beyond the singletons) and is written with its weights
    forced = pick_text_rule(dest, val_t, shifted, RulePickOptions(rules=("weighted",), samples=4, seed=3))
    pv2 = load_calibration_pvalues(dest)
    assert pv2.rule == forced.rule and pv2.weights == forced.weights
    if forced.rule == "weighted":
        assert abs(sum(pv2.weights) - 1.0) <= 1e-9 and dict(zip(pv2.parts, pv2.weights))["density"] in (0.5, 0.7, 0.8,
                                                                                                      0.9, 0.95)


def load_calibration_pvalues(root):
    from edgeuq_runtime import load_bundle

    return load_bundle(root).manifest.sections["calibration"].pvalues


def test_calibrate_cli_picks_the_device_rule_on_validation_texts(student, tmp_path, capsys):
    """`edgeuq calibrate --rule-val VAL --rule-shift FILE` on a text bundle writes the picked rule into the
    bundle (and the JSON); validation texts that are calibration texts are refused."""
    from text_teacher_support import questions, sentiment_rows, write_tsv

    from edgeuq.cli import main

    _, st, _ = student
    rows, seen = [], set()
    for t, y in sentiment_rows(400, 51):
        if t not in seen:
            seen.add(t)
            rows.append((t, {"thumbs down": "0", "Thumbs-Up": "1"}[y]))
    assert len(rows) >= 140
    cal = write_tsv(tmp_path / "cal.tsv", ["sentence", "label"], rows[:50])
    fit = write_tsv(tmp_path / "fit.tsv", ["sentence", "label"], rows[50:110])
    val = tmp_path / "val.txt"
    val.write_text("".join(t + "\n" for t, _ in rows[110:140]))
    q = tmp_path / "questions.txt"
    q.write_text("".join(t + "\n" for t in questions(30, 52)))
    out, js = tmp_path / "bundle", tmp_path / "cal.json"
    args = ["calibrate", "--bundle", str(st.bundle), "--data", str(cal), "--fit-data", str(fit), "--samples", "4",
            "--no-progress", "--out", str(out), "--rule-shift", str(q), "--json", str(js)]
    assert main(args + ["--rule-val", str(val)]) == 0
    doc = json.loads(js.read_text())
    pv = load_calibration_pvalues(out)
    assert list(pv.parts) == doc["device_rule"]["parts"] and pv.rule == doc["device_rule"]["rule"]
    assert doc["calibration"]["pvalues"]["parts"] == list(pv.parts)
    assert "device rule picked on validation" in capsys.readouterr().out
    val.write_text("".join(t + "\n" for t, _ in rows[:5]))            # calibration texts: refused
    assert main(args + ["--rule-val", str(val), "--out", str(tmp_path / "refused")]) == 2
    assert "are calibration inputs" in capsys.readouterr().err
