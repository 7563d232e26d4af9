"""Text OOD features and scores: layer-pooled (Avg-Avg) features against a manual loop,
the Mahalanobis density against a brute-force numpy reference, energy, sentence cutting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.models.bert import BertConfig, BertEncoder
from edgeuq.text.ood import avg_avg, energy_score, layer_pooled, shuffle_words, text_sentences, truncate_words
from edgeuq_runtime.density import fit_density

TINY = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                  max_position_embeddings=20)


def _ids(rng, n=7, t=9):
    ids = np.zeros((n, t), np.int64)
    for i in range(n):
        k = int(rng.integers(1, t + 1))
        ids[i, :k] = rng.integers(1, TINY.vocab_size, size=k)
    return ids


def test_layer_pooled_and_avg_avg_match_a_manual_loop_per_sentence_without_padding():
    torch.manual_seed(0)
    enc = BertEncoder(TINY, dropout=0.0).eval()
    rng = np.random.default_rng(0)
    ids = _ids(rng)
    got = layer_pooled(enc, ids, batch_size=3)  # batches mix lengths: padding must not leak into a mean
    assert got.shape == (len(ids), TINY.num_hidden_layers + 1, TINY.hidden_size)
    ref = np.zeros_like(got, dtype=np.float64)
    with torch.no_grad():
        for i, row in enumerate(ids):
            x = torch.from_numpy(row[row != 0][None])  # this sentence alone, no padding at all
            for layer in range(TINY.num_hidden_layers + 1):
                h = enc.embeddings(x) if layer == 0 else enc(x, stop=layer)[0]
                vals = h[0].numpy().astype(np.float64)
                ref[i, layer] = sum(vals[t] for t in range(vals.shape[0])) / vals.shape[0]
    err = np.max(np.abs(got - ref))
    assert err <= 1e-4, err
    aa = avg_avg(got)
    manual = np.zeros((len(ids), TINY.hidden_size))
    for i in range(len(ids)):
        for layer in range(1, TINY.num_hidden_layers + 1):
            manual[i] += ref[i, layer] / TINY.num_hidden_layers
    err = np.max(np.abs(aa - manual))
    assert err <= 1e-4, err
    sub = avg_avg(got, [0, 2])
    err = np.max(np.abs(sub - (ref[:, 0] + ref[:, 2]) / 2))
    assert err <= 1e-4, err


def test_avg_avg_rejects_bad_layers():
    f = np.zeros((2, 4, 3))
    with pytest.raises(ValueError, match="layers"):
        avg_avg(f, [4])
    with pytest.raises(ValueError, match="layers"):
        avg_avg(f, [])
    with pytest.raises(ValueError, match="shape"):
        avg_avg(f[0])


def _brute_force_nll(z, y, c, ridge):
    """-log sum_c pi_c N(z; mu_c, Sigma) with Sigma = pooled within-class covariance / (N - C) + ridge."""
    n, d = z.shape
    mus = [np.mean(z[y == k], axis=0) for k in range(c)]
    s = np.zeros((d, d))
    for i in range(n):
        v = z[i] - mus[y[i]]
        s += np.outer(v, v)
    s /= n - c
    s += np.eye(d) * ridge * np.trace(s) / d
    _, logdet = np.linalg.slogdet(s)
    pri = [np.mean(y == k) for k in range(c)]

    def nll(x):
        terms = []
        for k in range(c):
            v = x - mus[k]
            m2 = float(v @ np.linalg.solve(s, v))
            terms.append(np.log(pri[k]) - 0.5 * (d * np.log(2 * np.pi) + logdet + m2))
        top = max(terms)
        return -(top + np.log(sum(np.exp(t - top) for t in terms)))
    return nll


def test_mahalanobis_density_matches_brute_force_reference():
    rng = np.random.default_rng(1)
    d, c = 6, 3
    y = rng.integers(0, c, size=300)
    z = rng.normal(size=(300, d)) @ rng.normal(size=(d, d)) + 3.0 * y[:, None]
    g = fit_density(z, y, c, ridge=1e-3)
    ref = _brute_force_nll(z, y, c, 1e-3)
    test = rng.normal(size=(40, d)) * 4
    got = g.score(test, "none")
    want = np.array([ref(x) for x in test])
    err = np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))
    assert err <= 1e-8, err
    # squared distances, one class at a time
    m2 = g.mahalanobis_sq(test)
    cov = np.linalg.inv(g.precision)
    for k in range(c):
        v = test - g.means[k]
        want_k = np.einsum("nd,nd->n", v, np.linalg.solve(cov, v.T).T)
        assert np.max(np.abs(m2[:, k] - want_k) / np.maximum(1.0, want_k)) <= 1e-8


def test_energy_score_matches_a_direct_formula_and_orders_confidence():
    z = np.array([[10.0, 0.0], [0.1, 0.0], [-3.0, 2.0]])
    for t in (1.0, 2.5):
        want = [-t * np.log(np.sum(np.exp(r / t))) for r in z]
        err = np.max(np.abs(energy_score(z, t) - want))
        assert err <= 1e-12, err
    e = energy_score(z)
    assert e[0] < e[1]  # a confident (large-logit) row is less unusual
    big = energy_score(np.array([[1000.0, 999.0]]))
    assert np.isfinite(big).all()
    with pytest.raises(ValueError, match="temperature"):
        energy_score(z, 0.0)


def test_text_sentences_cuts_and_filters():
    text = ("This module provides a portable way of using operating system dependent functionality. "
            "See also: os.path.  x = f(a[1], b{2}) == 3;; ## ok ok ok ok.\n\n  It   returns a new list "
            "of the items. This module provides a portable way of using operating system dependent functionality.")
    got = text_sentences([text], min_words=4)
    assert got == ["This module provides a portable way of using operating system dependent functionality.",
                   "It returns a new list of the items."]


def test_shuffle_and_truncate_keep_words():
    rng = np.random.default_rng(0)
    s = ["a b c d e f g h i j"]
    sh = shuffle_words(s, rng)[0]
    assert sorted(sh.split()) == sorted(s[0].split()) and sh != s[0]
    assert truncate_words(s) == ["a b c"]
    assert truncate_words(["one two three"]) == ["one two"]


@pytest.mark.parametrize("kind", ["frozen_avg", "avgavg", "pretrained"])
def test_bundle_with_ood_features_runtime_trunk_emits_them_and_predicts_like_the_classifier(tmp_path, kind):
    from edgeuq.text.classifier import TextClassifier
    from edgeuq.text.export import export_text_bundle
    from edgeuq.text.ood import WithOODFeatures
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.wordpiece import WordPieceTokenizer

    cfg = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=20)
    torch.manual_seed(5)
    pretrained = BertEncoder(cfg, dropout=0.0).eval()
    model = TextClassifier(cfg, num_classes=2, hidden=8, scheme="mc_dropout").eval()
    model.encoder.load_state_dict(pretrained.state_dict())
    with torch.no_grad():  # "fine-tune" the top layer only
        for p in model.encoder.layers[2].parameters():
            p.add_(0.3 * torch.randn_like(p))
    wrapped = WithOODFeatures(model, pretrained, kind, start=2)
    words = ["good", "bad", "film", "the", "not", "very", "fun"]
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = specials + words + [f"w{i}" for i in range(cfg.vocab_size - len(specials) - len(words))]
    tok = WordPieceTokenizer(vocab=tuple(vocab), max_length=10, special_tokens=tuple(specials))
    texts = ["the film is very good", "not fun , bad", "w3 w4 w5 w6 w7 w8 w9"]
    b = export_text_bundle(wrapped, tok, tmp_path / "b", ("negative", "positive"), "tiny-ood", check_texts=texts,
                           default_samples=4)
    rt = UncertaintyRuntime(b.root, threads=1)
    ids = tok.encode_batch(texts)
    got = rt.trunk_features(ids)
    with torch.no_grad():
        ft = model.trunk(torch.from_numpy(ids)).numpy()
    lp = layer_pooled(pretrained, ids)
    want_ood = {"avgavg": avg_avg(lp), "pretrained": lp[:, -1], "frozen_avg": avg_avg(lp, [1, 2])}[kind]
    assert b.manifest.metadata["density_columns"] == [16, 32]
    assert got.shape == (3, 32)
    err = max(np.max(np.abs(got[:, :16] - ft)), np.max(np.abs(got[:, 16:] - want_ood)))
    assert err <= 1e-4, err
    assert np.max(np.abs(got[:, 16:] - ft)) > 1e-2  # the fine-tuned layer really differs
    with torch.no_grad():
        p = torch.softmax(model(torch.from_numpy(ids)), -1).numpy()
    assert np.max(np.abs(rt.deterministic(ids).probs - p)) <= 1e-4


def test_with_ood_features_refuses_a_fine_tuned_shared_layer():
    from edgeuq.text.classifier import TextClassifier
    from edgeuq.text.ood import WithOODFeatures

    torch.manual_seed(6)
    pretrained = BertEncoder(TINY, dropout=0.0).eval()
    model = TextClassifier(TINY, num_classes=2, hidden=8).eval()
    model.encoder.load_state_dict(pretrained.state_dict())
    with torch.no_grad():
        model.encoder.layers[0].intermediate.dense.bias.add_(1.0)
    with pytest.raises(ValueError, match="start=2"):
        WithOODFeatures(model, pretrained, "avgavg", start=2)
    WithOODFeatures(model, pretrained, "avgavg", start=0)  # nothing shared: fine
    with pytest.raises(ValueError, match="frozen layer"):
        WithOODFeatures(model, pretrained, "frozen_avg", start=0)


def test_text_teacher_stage_with_ood_features_ships_pretrained_avg_avg_in_the_trunk(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from require_extras import require_extra

    require_extra("safetensors", "text")
    from text_teacher_support import sentiment_rows, write_tiny_model, write_tsv

    from edgeuq.text.pipeline import TeacherOptions, train_text_teacher
    from edgeuq.text.pretrained import load_pretrained
    from edgeuq_runtime import UncertaintyRuntime

    model_dir = write_tiny_model(tmp_path / "model")
    train = write_tsv(tmp_path / "train.tsv", ["sentence", "label"], sentiment_rows(40, 0))
    test = write_tsv(tmp_path / "test.tsv", ["sentence", "label"], sentiment_rows(12, 2))
    opts = TeacherOptions(train_layers=1, epochs=2, lr=3e-3, lr_head=3e-2, batch=8, max_length=12, samples=4,
                          schemes=("mc_dropout",), ood_features="avgavg")
    art = train_text_teacher(train, tmp_path / "out", opts, val=test, test=test, model=model_dir,
                             log=lambda m: None)
    rt = UncertaintyRuntime(art.bundle_path("mc_dropout"), threads=1)
    texts = ["a good film", "bad bad plot", "what is the capital of france"]
    ids = rt.tokenize(texts)
    feats = rt.trunk_features(ids)
    pre = load_pretrained(model_dir)
    d = pre.config.hidden_size
    assert feats.shape == (3, 2 * d)
    want = avg_avg(layer_pooled(pre.encoder(dropout=0.0), ids))
    err = np.max(np.abs(feats[:, d:] - want))
    assert err <= 1e-4, err
    model = art.load_model("mc_dropout")
    with torch.no_grad():
        ft = model.trunk(torch.from_numpy(ids)).numpy()
    assert np.max(np.abs(feats[:, :d] - ft)) <= 1e-4
    with pytest.raises(ValueError, match="ood_features"):
        TeacherOptions(ood_features="everything")


def test_density_column_pooling_and_its_validation():
    from edgeuq_runtime.density import check_pooling, pool_features
    from edgeuq_runtime.errors import InputError

    f = np.arange(12.0).reshape(2, 6)
    assert np.array_equal(pool_features(f, "columns:2:5"), f[:, 2:5])
    assert check_pooling("columns:0:1") == "columns:0:1"
    for bad in ("columns:3:3", "columns:a:4", "columns:1", "cols:0:2", "max"):
        with pytest.raises(InputError, match="pooling"):
            check_pooling(bad)
    with pytest.raises(InputError, match="columns:2:9"):
        pool_features(f, "columns:2:9")
    with pytest.raises(InputError):
        pool_features(np.zeros((2, 3, 6)), "columns:0:2")


def test_calibrated_bundle_density_is_fitted_on_the_ood_columns_only(tmp_path):
    """edgeuq calibrate on a bundle whose trunk emits [fine-tuned | frozen Avg-Avg]: the density
    model is the Gaussian of the tail columns of the fit texts' trunk features, and the runtime's
    density score is that Gaussian's score (independent fit on the features read back)."""
    from edgeuq.calibrate.fit import CalibrationOptions, calibrate_bundle
    from edgeuq.text.classifier import TextClassifier
    from edgeuq.text.export import export_text_bundle
    from edgeuq.text.ood import WithOODFeatures
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.wordpiece import WordPieceTokenizer

    cfg = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16,
                     max_position_embeddings=20)
    torch.manual_seed(7)
    pretrained = BertEncoder(cfg, dropout=0.0).eval()
    model = TextClassifier(cfg, num_classes=2, hidden=8, scheme="mc_dropout").eval()
    model.encoder.load_state_dict(pretrained.state_dict())
    wrapped = WithOODFeatures(model, pretrained, "frozen_avg", start=1)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = specials + [f"w{i}" for i in range(cfg.vocab_size - len(specials))]
    tok = WordPieceTokenizer(vocab=tuple(vocab), max_length=8, special_tokens=tuple(specials))
    b = export_text_bundle(wrapped, tok, tmp_path / "b", ("negative", "positive"), "tiny-ood", default_samples=4)
    rng = np.random.default_rng(0)

    def ids(n, lo=4, hi=30):
        x = np.zeros((n, 8), np.int64)
        for i in range(n):
            k = int(rng.integers(2, 7))
            x[i, 0], x[i, 1:k + 1], x[i, k + 1] = 2, rng.integers(lo, hi, size=k), 3
        return np.unique(x, axis=0)

    fit_x, cal_x = ids(120, 4, 17), ids(60, 17, 30)  # disjoint tokens: no text in both
    fit_y, cal_y = rng.integers(0, 2, len(fit_x)), rng.integers(0, 2, len(cal_x))
    calibrate_bundle(b.root, cal_x, cal_y, fit_x, fit_y, CalibrationOptions(samples=4), log=lambda m: None)
    rt = UncertaintyRuntime(b.root, threads=1)
    feats = rt.trunk_features(fit_x)
    ref = fit_density(feats[:, 8:16].astype(np.float64), fit_y, 2, ridge=CalibrationOptions().ridge)
    test_x = ids(10)
    from edgeuq.calibrate.scores import calibrated_extra_scores

    r = rt.predict(test_x, samples=4, seed=1)
    got = calibrated_extra_scores(rt, test_x, r.epistemic, r.total, r.prediction)["density"]
    want = ref.score(rt.trunk_features(test_x)[:, 8:16].astype(np.float64), "none")
    err = np.max(np.abs(got - want) / np.maximum(1.0, np.abs(want)))
    assert err <= 1e-6, err
    whole = fit_density(feats.astype(np.float64), fit_y, 2).score(rt.trunk_features(test_x).astype(np.float64), "none")
    assert np.max(np.abs(got - whole)) > 1e-3  # not the density of all 16 columns
