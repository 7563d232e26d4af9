"""edgeuq's BERT encoder vs the reference implementation (transformers' BertModel),
on a tiny random encoder (fast) and on the packaged all-MiniLM-L6-v2 weights
(integration); exported ONNX graphs vs PyTorch; the runtime runs the bundle."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from require_extras import require_extra

transformers = require_extra("transformers", "text")

from edgeuq.models.bert import BertConfig, BertEncoder, masked_mean_pool  # noqa: E402

TINY = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=24)


def _reference(cfg: BertConfig, state):
    ref = transformers.BertModel(transformers.BertConfig(**cfg.to_json(), attention_probs_dropout_prob=0.0,
                                                         hidden_dropout_prob=0.0), add_pooling_layer=False)
    missing, unexpected = ref.load_state_dict({k: v for k, v in state.items() if not k.startswith("pooler.")},
                                              strict=False)
    assert not missing and all("position_ids" in k for k in unexpected), (missing, unexpected)
    return ref.eval()


def _ids(rng: np.random.Generator, batch: int, length: int, vocab: int) -> torch.Tensor:
    ids = rng.integers(1, vocab, size=(batch, length))
    for i in range(batch):  # [CLS]-like first token, varying padding
        ids[i, max(2, length - 3 * i):] = 0
    return torch.from_numpy(ids.astype(np.int64))


@pytest.fixture(scope="module")
def tiny_pair():
    torch.manual_seed(0)
    ref = transformers.BertModel(transformers.BertConfig(**TINY.to_json()), add_pooling_layer=False).eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters, so a swapped gamma/beta would show
        for name, p in ref.named_parameters():
            if "LayerNorm" in name:
                p.add_(0.3 * torch.randn_like(p))
    ours = BertEncoder(TINY)
    ours.load_bert_state(ref.state_dict())
    return ours.eval(), ref


def test_tiny_encoder_matches_transformers_bertmodel(tiny_pair):
    ours, ref = tiny_pair
    ids = _ids(np.random.default_rng(1), 4, 12, TINY.vocab_size)
    with torch.no_grad():
        h, mask = ours(ids)
        r = ref(input_ids=ids, attention_mask=(ids != 0).long()).last_hidden_state
    err = float(((h - r).abs() * mask[..., None]).max())
    assert err <= 1e-5, err
    # the comparison is not vacuous: an untrained encoder differs by O(1)
    other = BertEncoder(TINY).eval()
    with torch.no_grad():
        assert float(((other(ids)[0] - r).abs() * mask[..., None]).max()) > 0.1


def test_padding_does_not_change_real_tokens(tiny_pair):
    ours, _ = tiny_pair
    ids = _ids(np.random.default_rng(2), 1, 6, TINY.vocab_size)
    longer = torch.cat([ids, torch.zeros((1, 10), dtype=torch.int64)], dim=1)
    with torch.no_grad():
        a = masked_mean_pool(*ours(ids))
        b = masked_mean_pool(*ours(longer))
    assert float((a - b).abs().max()) <= 1e-5


def test_loading_refuses_mismatched_weights(tiny_pair):
    _, ref = tiny_pair
    state = dict(ref.state_dict())
    bigger = BertEncoder(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=48, max_position_embeddings=24))
    with pytest.raises(ValueError, match="missing"):
        bigger.load_bert_state(state)
    state["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(47, 32)
    with pytest.raises(ValueError, match="shapes"):
        BertEncoder(TINY).load_bert_state(state)


def test_config_validation():
    with pytest.raises(ValueError, match="divisible"):
        BertConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="gelu"):
        BertConfig.from_json({"model_type": "bert", "hidden_act": "relu"})
    with pytest.raises(ValueError, match="BERT"):
        BertConfig.from_json({"model_type": "gpt2"})


# -- classifier, export, bundle --------------------------------------------------------
def _tiny_classifier(scheme: str):
    from edgeuq.text.classifier import TextClassifier

    torch.manual_seed(3)
    model = TextClassifier(TINY, num_classes=2, hidden=16, scheme=scheme).eval()
    return model


def _tiny_wordpiece(max_length: int = 10):
    from edgeuq_runtime.wordpiece import WordPieceTokenizer

    words = ["good", "bad", "film", "the", "not", "very", "##s", "!", ",", "fun"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + words + [f"w{i}" for i in range(TINY.vocab_size - len(specials) - len(words))]
    return WordPieceTokenizer(vocab=tuple(vocab), max_length=max_length, special_tokens=tuple(specials))


@pytest.mark.parametrize("scheme", ["mc_dropout", "laplace"])
def test_export_bundle_matches_pytorch_and_runs_on_the_runtime(tmp_path, scheme):
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.noise import sample_noise_tiled

    from edgeuq.text.export import export_text_bundle, max_export_difference

    model = _tiny_classifier(scheme)
    if scheme == "laplace":  # a fitted posterior, so the noise input matters
        from edgeuq.schemes.laplace import laplace_factors_kron

        rng = np.random.default_rng(0)
        phi = rng.standard_normal((64, 16))
        probs = np.full((64, 2), 0.5)
        a_inv, g_chol = laplace_factors_kron(phi, probs, 1.0)
        model.fc2.set_posterior(1.0, a_inv=a_inv, g_chol=g_chol)
    tok = _tiny_wordpiece()
    texts = ["the film is very good !", "not fun , bad films", "zzz"]
    bundle = export_text_bundle(model, tok, tmp_path / "b", ("negative", "positive"), "tiny-text",
                                check_texts=texts, default_samples=5)
    diff = bundle.manifest.metadata["export_max_abs_diff"]
    assert diff["logits"] <= 1e-4 and diff["features"] <= 1e-4
    # independent re-check on other ids: ORT vs PyTorch
    ids = tok.encode_batch(["good good", "the the the film"])
    again = max_export_difference(model, bundle.root / "trunk.onnx", bundle.root / "head.onnx", ids, samples=3, seed=9)
    assert again["logits"] <= 1e-4, again

    rt = UncertaintyRuntime(bundle.root, threads=1)
    np.testing.assert_array_equal(rt.tokenize(texts), tok.encode_batch(texts))
    res = rt.predict_text(texts, samples=5, seed=11)
    # the runtime's MC predictive equals PyTorch's with the same noise (s-major tiling)
    noise = sample_noise_tiled(bundle.manifest.noise, 5, len(texts), np.random.default_rng(11))
    with torch.no_grad():
        feats = model.trunk(torch.from_numpy(tok.encode_batch(texts))).repeat(5, 1)
        probs = torch.softmax(model.head_forward(feats, {k: torch.from_numpy(v) for k, v in noise.items()}), -1)
    mean = probs.numpy().reshape(5, len(texts), 2).mean(0)
    np.testing.assert_allclose(res.probs, mean, atol=1e-5)
    # the samples differ (the noise is really used), so the check above is not vacuous
    assert float(probs.numpy().reshape(5, len(texts), 2).std(0).max()) > 1e-4


# -- packaged weights (integration) ------------------------------------------------------
SENTENCES = ["A gripping, funny and moving film.", "What is the capital of France?", "I didn't like it at all."]


@pytest.fixture(scope="module")
def packaged():
    from edgeuq.text.pretrained import TextExtraMissing, load_pretrained

    require_extra("safetensors", "text")
    try:
        return load_pretrained()
    except TextExtraMissing as exc:
        from require_extras import in_ci

        if in_ci():
            pytest.fail(f"CI=true: {exc}")
        pytest.skip(str(exc))


def test_packaged_minilm_matches_transformers(packaged):
    from edgeuq.text.wordpiece import reference_tokenizer, wordpiece_from_tokenizer_json

    assert packaged.config.num_hidden_layers == 6 and packaged.config.hidden_size == 384
    tok = wordpiece_from_tokenizer_json(packaged.tokenizer_json, 32)
    ref_tok = reference_tokenizer(packaged.tokenizer_json, 32)
    ids = tok.encode_batch(SENTENCES)
    np.testing.assert_array_equal(ids, np.asarray([e.ids for e in ref_tok.encode_batch(SENTENCES)]))
    ours = packaged.encoder().eval()
    ref = _reference(packaged.config, packaged.state)
    x = torch.from_numpy(ids)
    with torch.no_grad():
        h, mask = ours(x)
        r = ref(input_ids=x, attention_mask=(x != 0).long()).last_hidden_state
        ours_emb = torch.nn.functional.normalize(masked_mean_pool(h, mask), dim=-1)
        ref_emb = torch.nn.functional.normalize(masked_mean_pool(r, mask), dim=-1)
    assert float(((h - r).abs() * mask[..., None]).max()) <= 1e-4
    assert float((ours_emb - ref_emb).abs().max()) <= 1e-5


# -- fine-tuning on cached frozen layers, Laplace fit, distillation stage ----------------
def _toy_task(n: int, seed: int):
    """Sentiment by keyword: label 1 iff "good" (id 5) occurs before any "bad" (id 6)."""
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, 10), dtype=np.int64)
    y = np.zeros(n, dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(3, 8))
        body = rng.integers(7, TINY.vocab_size, size=k)
        y[i] = int(rng.integers(0, 2))
        body[int(rng.integers(0, k))] = 5 if y[i] else 6
        ids[i, 0], ids[i, 1:k + 1], ids[i, k + 1] = 2, body, 3
    return ids, y


def test_cache_finetune_laplace_and_features_agree_with_full_trunk(tmp_path):
    from edgeuq.text.cache import cache_hidden
    from edgeuq.text.finetune import FinetuneConfig, features_from_cache, finetune, fit_text_laplace
    from edgeuq.training import TrainConfig

    model = _tiny_classifier("mc_dropout")
    ids, y = _toy_task(256, 0)
    vids, vy = _toy_task(128, 1)
    cache = cache_hidden(model.encoder, ids, y, start=1, path=tmp_path / "c.npz")
    again = cache_hidden(model.encoder, ids, y, start=1, path=tmp_path / "c.npz")  # read back from disk
    np.testing.assert_array_equal(cache.states, again.states)
    vcache = cache_hidden(model.encoder, vids, vy, start=1)
    # cached layer-0 states (float16) + layer 1 == the full trunk
    with torch.no_grad():
        full = model.trunk(torch.from_numpy(vids)).numpy()
    assert float(np.abs(features_from_cache(model, vcache) - full).max()) <= 2e-2
    frozen = model.encoder.layers[0].output.dense.weight.detach().clone()
    cfg = FinetuneConfig(train_layers=1, lr_head=3e-3, train=TrainConfig(epochs=8, batch_size=32, lr=1e-3,
                                                                         weight_decay=0.01))
    hist = finetune(model, cache, cfg, val=vcache)
    assert torch.equal(frozen, model.encoder.layers[0].output.dense.weight)  # the frozen layer stayed frozen
    assert hist["val_acc"][-1] >= 0.9, hist
    fit = fit_text_laplace(model, features_from_cache(model, cache), features_from_cache(model, vcache), vy)
    assert model.fc2.fitted and fit["prior_precision"] in fit["grid"]
    assert fit["val_nll"][fit["grid"].index(fit["prior_precision"])] == min(fit["val_nll"])


def test_init_embeddings_is_the_principal_projection():
    from edgeuq.text.distill import init_embeddings, student_config
    from edgeuq.models import build_model

    teacher = _tiny_classifier("mc_dropout")
    student = build_model(student_config(TINY.vocab_size, 10, d_model=8, depth=1, heads=2, ffn=16))
    share = init_embeddings(student, teacher)
    e = teacher.encoder.embeddings.word_embeddings.weight.detach().numpy().astype(np.float64)
    c = e - e.mean(0)
    s = np.linalg.svd(c, compute_uv=False)
    assert abs(share - (s[:8] ** 2).sum() / (s ** 2).sum()) <= 1e-6
    w = student.embed.weight.detach().numpy().astype(np.float64)[1:]
    # the student rows span the teacher's top-8 principal subspace: reconstructing the centred
    # teacher rows from them leaves exactly the variance outside that subspace
    coef, *_ = np.linalg.lstsq(w, c[1:], rcond=None)
    resid = ((c[1:] - w @ coef) ** 2).sum() / (c[1:] ** 2).sum()
    assert abs(resid - (1 - share)) <= 0.05, (resid, share)


def test_distillation_through_the_compression_stage(tmp_path):
    from edgeuq.compress.distill import DistillConfig
    from edgeuq.text.cache import cache_hidden
    from edgeuq.text.distill import distill_text_student, student_config, teacher_transfer_sets
    from edgeuq.text.finetune import FinetuneConfig, finetune
    from edgeuq.training import TrainConfig

    teacher = _tiny_classifier("mc_dropout")
    ids, y = _toy_task(256, 0)
    vids, vy = _toy_task(64, 1)
    cache = cache_hidden(teacher.encoder, ids, y, start=1)
    finetune(teacher, cache, FinetuneConfig(train_layers=1, lr_head=3e-3,
                                            train=TrainConfig(epochs=4, batch_size=32, lr=1e-3, weight_decay=0.01)))
    with torch.no_grad():
        vfeats = teacher.trunk(torch.from_numpy(vids)).numpy()
    train, val = teacher_transfer_sets(teacher, cache, ids, vfeats, vids, samples=4)
    assert train.probs.shape == (4, 256, 2) and np.allclose(train.probs.sum(-1), 1, atol=1e-5)
    ck = distill_text_student(teacher, "tiny", "0" * 64, (train, val), y, vy,
                              student_config(TINY.vocab_size, 10, d_model=8, depth=1, heads=2, ffn=16),
                              tmp_path / "student", ("negative", "positive"),
                              cfg=DistillConfig(train=TrainConfig(epochs=2, batch_size=32, lr=2e-3, patience=2)),
                              log=lambda m: None)
    assert ck.metrics["distill"]["teacher"] == "tiny" and ck.metrics["distill"]["best_epoch"] >= 1
    student = ck.load_model()
    assert student.cfg.embed == "token" and student.cfg.vocab_size == TINY.vocab_size


def test_laplace_student_posterior_is_fitted_and_kept_in_its_checkpoint(tmp_path):
    from dataclasses import replace

    from edgeuq.compress.distill import DISTILL_TRAIN, DistillConfig
    from edgeuq.schemes.laplace import fit_laplace
    from edgeuq.text.cache import cache_hidden
    from edgeuq.text.distill import STUDENT_PRIOR_GRID, distill_text_student, fit_student_laplace, student_config
    from edgeuq.text.distill import student_loss
    from edgeuq.text.distill import teacher_transfer_sets
    from edgeuq.training import load_checkpoint

    teacher = _tiny_classifier("laplace")
    ids, y = _toy_task(192, 0)
    vids, vy = _toy_task(64, 1)
    cache = cache_hidden(teacher.encoder, ids, y, start=1)
    with torch.no_grad():
        vfeats = teacher.trunk(torch.from_numpy(vids)).numpy()
    labelled = teacher_transfer_sets(teacher, cache, ids, vfeats, vids, samples=2)
    one_epoch = replace(DISTILL_TRAIN, epochs=1, batch_size=32)
    cfg = student_config(TINY.vocab_size, 10, d_model=8, depth=1, heads=2, ffn=16, scheme="laplace")
    ck = distill_text_student(teacher, "tiny", "0" * 64, labelled, y, vy, cfg, tmp_path / "student",
                              ("negative", "positive"), cfg=DistillConfig(loss="kl", train=one_epoch),
                              log=lambda m: None, init_from_teacher=False)
    (Path(ck.directory) / "tokenizer.json").write_text("{}")
    before = ck.load_model()
    assert not before.head.fc2.fitted
    fitted = fit_student_laplace(ck, ids, vids, vy, log=lambda m: None)
    # a second path: the plain scheme fit on the pre-fit weights, same grid
    ref = fit_laplace(before, ids, vids, vy, prior_grid=STUDENT_PRIOR_GRID)  # fits `before` in place
    again = load_checkpoint(ck.directory)
    model = again.load_model()
    assert model.head.fc2.fitted
    assert again.metrics["laplace"]["prior_precision"] == ref.prior_precision
    for name, buf in before.head.fc2.state_dict().items():
        got = model.head.fc2.state_dict()[name]
        assert float((got.double() - buf.double()).abs().max()) <= 1e-6, name
    assert (Path(ck.directory) / "tokenizer.json").read_text() == "{}"  # other files survive the rewrite
    assert fitted.digest == again.digest and "distill" in again.metrics
    mc = distill_text_student(teacher, "tiny", "0" * 64, labelled, y, vy,
                              student_config(TINY.vocab_size, 10, d_model=8, depth=1, heads=2, ffn=16),
                              tmp_path / "mc", ("negative", "positive"), cfg=DistillConfig(train=one_epoch),
                              log=lambda m: None, init_from_teacher=False)
    with pytest.raises(ValueError, match="laplace"):
        fit_student_laplace(mc, ids, vids, vy)
    with pytest.raises(ValueError, match="bogus"):
        student_config(TINY.vocab_size, 10, scheme="bogus")
    # the loss follows whether the stochastic layers sample while the student learns
    assert student_loss(cfg) == "kl"
    assert student_loss(student_config(TINY.vocab_size, 10, d_model=8, depth=1, heads=2, ffn=16)) == "kl+uq"
