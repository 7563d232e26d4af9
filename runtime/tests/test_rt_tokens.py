"""Token input (int64 ids + bundled tokenizer) and the categorical noise kind (no torch)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeuq_runtime import (
    GraphSpec, InputError, InputSpec, Manifest, ManifestError, NoiseSpec, UncertaintyRuntime, mean_noise,
    sample_noise, write_bundle,
)
from edgeuq_runtime.preprocess import validate_tokens
from edgeuq_runtime.tokenizer import WordTokenizer, split_words
from rt_helpers import make_manifest

VOCAB = ("[PAD]", "[UNK]", "the", "film", "is", "good", "bad", ",", "'", "s", "?")
L, D, C = 6, 4, 2


def tok() -> WordTokenizer:
    return WordTokenizer(vocab=VOCAB, max_length=L)


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_hand_computed_ids():
    t = tok()
    assert split_words("The film's GOOD?!") == ["the", "film", "'", "s", "good", "?", "!"]
    assert t.encode("The film's GOOD?!") == [2, 3, 8, 9, 5, 10]          # truncated to 6, "!" would be UNK
    assert t.encode("the unseen film") == [2, 1, 3, 0, 0, 0]            # UNK and right padding
    assert t.encode("") == [0] * L
    ids = t.encode_batch(["good", "bad , bad"])
    assert ids.dtype == np.int64 and ids.shape == (2, L)
    assert ids.tolist() == [[5, 0, 0, 0, 0, 0], [6, 7, 6, 0, 0, 0]]
    assert t.decode(ids[1]) == ["bad", ",", "bad"]


def test_tokenizer_unicode_normalisation_is_deterministic():
    t = WordTokenizer(vocab=("[PAD]", "[UNK]", "cafe", "café", "fi"), max_length=4)
    # NFKC folds the "fi" ligature and composes e + combining acute into é
    assert split_words("ﬁ Cafe\u0301") == ["fi", "café"]
    assert t.encode("ﬁ Cafe\u0301") == [4, 3, 0, 0]


def test_tokenizer_json_round_trip(tmp_path):
    t = tok()
    path = t.save(tmp_path / "tokenizer.json")
    again = WordTokenizer.load(path)
    assert again == t
    texts = ["the film is good", "bad ? bad", "s ' s"]
    assert np.array_equal(again.encode_batch(texts), t.encode_batch(texts))


@pytest.mark.parametrize("vocab, match", [
    (("the", "[UNK]", "x"), "must start with"),
    (("[PAD]", "[UNK]"), "at least"),
    (("[PAD]", "[UNK]", "a", "a"), "duplicate"),
])
def test_tokenizer_rejects_bad_vocab(vocab, match):
    with pytest.raises(ManifestError, match=match):
        WordTokenizer(vocab=vocab, max_length=4)


def test_tokenizer_rejects_bad_json(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({**tok().to_json(), "version": 99}))
    with pytest.raises(ManifestError, match="version"):
        WordTokenizer.load(p)
    p.write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        WordTokenizer.load(p)
    with pytest.raises(InputError, match="one string"):
        tok().encode_batch("a single string")


# ----------------------------------------------------------------------------- validation

def test_validate_tokens_accepts_integer_ids():
    out = validate_tokens(np.array([1, 2, 3], np.int32), 3, 10)
    assert out.dtype == np.int64 and out.shape == (1, 3)
    assert validate_tokens(np.zeros((2, 3), np.uint8), 3, 10).shape == (2, 3)


@pytest.mark.parametrize("x, match", [
    (np.zeros((2, 3), np.float32), "integer dtype"),
    (np.zeros((2, 3), bool), "integer dtype"),
    (np.zeros((2, 4), np.int64), "must have 3 ids"),
    (np.zeros((0, 3), np.int64), "empty"),
    (np.array([[1, 2, 10]]), r"\[0, 10\).*position 2: 10"),
    (np.array([[1, -1, 2]]), r"first at sequence 0, position 1: -1"),
    ("text", "numpy array"),
])
def test_validate_tokens_refuses(x, match):
    with pytest.raises(InputError, match=match):
        validate_tokens(x, 3, 10)


# ----------------------------------------------------------------------------- manifest

def test_float_manifest_json_is_unchanged():
    spec = InputSpec(length=16, sample_rate_hz=50.0)
    assert spec.to_json() == {"name": "signal", "length": 16, "dtype": "float32", "sample_rate_hz": 50.0,
                              "normalization": "zscore"}
    assert not spec.is_tokens


def test_token_input_spec_round_trip():
    spec = InputSpec(length=L, sample_rate_hz=1.0, name="tokens", dtype="int64", normalization="none",
                     vocab_size=len(VOCAB), tokenizer="tokenizer.json")
    assert spec.to_json()["vocab_size"] == len(VOCAB) and spec.to_json()["tokenizer"] == "tokenizer.json"
    assert InputSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("kw, match", [
    (dict(dtype="int64", normalization="none"), r"input.vocab_size"),
    (dict(dtype="int64", normalization="zscore", vocab_size=10), r"input.normalization.*'none'"),
    (dict(dtype="int64", normalization="none", vocab_size=1), r"input.vocab_size: must be >= 2"),
    (dict(vocab_size=10), r"input.vocab_size: only applies"),
    (dict(tokenizer="t.json"), r"input.tokenizer: only applies"),
    (dict(dtype="int64", normalization="none", vocab_size=10, tokenizer="../t.json"), r"input.tokenizer"),
])
def test_token_input_spec_validation(kw, match):
    with pytest.raises(ManifestError, match=match):
        InputSpec(length=4, sample_rate_hz=1.0, **kw)


def test_manifest_requires_tokenizer_file_listed():
    spec = InputSpec(length=L, sample_rate_hz=1.0, name="tokens", dtype="int64", normalization="none",
                     vocab_size=len(VOCAB), tokenizer="tokenizer.json")
    files = {"trunk.onnx": "ab" * 32, "head.onnx": "cd" * 32}
    with pytest.raises(ManifestError, match="tokenizer file 'tokenizer.json'"):
        make_manifest(input=spec, trunk=GraphSpec("trunk.onnx", ("tokens",), ("features",)), files=files)


# ----------------------------------------------------------------------------- session

def _token_bundle(tmp_path: Path, with_tokenizer: bool = True):
    """trunk: tokens (B, L) int64 -> features = mean_t E[tokens] (B, D); head: (features * mask) @ V."""
    rng = np.random.default_rng(0)
    E = rng.standard_normal((len(VOCAB), D)).astype(np.float32)
    V = rng.standard_normal((D, C)).astype(np.float32)
    vi = helper.make_tensor_value_info
    trunk = helper.make_graph(
        [helper.make_node("Gather", ["E", "tokens"], ["emb"], axis=0),
         helper.make_node("ReduceMean", ["emb"], ["features"], axes=[1], keepdims=0)], "trunk",
        [vi("tokens", TensorProto.INT64, ["B", L])], [vi("features", TensorProto.FLOAT, ["B", D])],
        initializer=[numpy_helper.from_array(E, "E")])
    head = helper.make_graph(
        [helper.make_node("Mul", ["features", "mask_0"], ["m"]), helper.make_node("MatMul", ["m", "V"], ["logits"])],
        "head", [vi("features", TensorProto.FLOAT, ["N", D]), vi("mask_0", TensorProto.FLOAT, ["N", D])],
        [vi("logits", TensorProto.FLOAT, ["N", C])], initializer=[numpy_helper.from_array(V, "V")])
    src = tmp_path / "src"
    src.mkdir()
    for g, name in ((trunk, "trunk.onnx"), (head, "head.onnx")):
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.save(model, str(src / name))
    sources = {"trunk.onnx": src / "trunk.onnx", "head.onnx": src / "head.onnx"}
    if with_tokenizer:
        sources["tokenizer.json"] = tok().save(src / "tokenizer.json")
    m = make_manifest(
        input=InputSpec(length=L, sample_rate_hz=1.0, name="tokens", dtype="int64", normalization="none",
                        vocab_size=len(VOCAB), tokenizer="tokenizer.json" if with_tokenizer else None),
        class_names=("negative", "positive"),
        noise=(NoiseSpec("mask_0", "dropout_mask", (D,), {"p": 0.5}),),
        trunk=GraphSpec("trunk.onnx", ("tokens",), ("features",)),
        head=GraphSpec("head.onnx", ("features", "mask_0"), ("logits",)))
    write_bundle(tmp_path / "bundle", m, sources)
    return tmp_path / "bundle", E, V


def test_token_bundle_predicts_from_ids_and_text(tmp_path):
    root, E, V = _token_bundle(tmp_path)
    rt = UncertaintyRuntime(root, seed=0)
    texts = ["the film is good", "bad , bad ?"]
    ids = rt.tokenize(texts)
    assert np.array_equal(ids, tok().encode_batch(texts))
    det = rt.deterministic(ids)
    logits = E[ids].mean(axis=1) @ V
    expect = np.exp(logits - logits.max(-1, keepdims=True))
    assert np.allclose(det.probs, expect / expect.sum(-1, keepdims=True), atol=1e-5)
    a = rt.predict_text(texts, samples=5, seed=3)
    b = rt.predict(ids, samples=5, seed=3)
    assert a.samples.shape == (5, 2, 2) and np.array_equal(a.samples, b.samples)
    with pytest.raises(InputError, match="integer dtype"):
        rt.predict(ids.astype(np.float32))
    with pytest.raises(InputError, match=r"\[0, 11\)"):
        rt.predict(ids + 100)


def test_bundle_without_tokenizer_refuses_text(tmp_path):
    root, _, _ = _token_bundle(tmp_path, with_tokenizer=False)
    rt = UncertaintyRuntime(root)
    assert rt.predict(np.array([[2, 3, 0, 0, 0, 0]])).prediction.shape == (1,)
    with pytest.raises(InputError, match="no tokenizer"):
        rt.predict_text(["good"])


def test_tokenizer_that_disagrees_with_manifest_is_refused(tmp_path):
    root, _, _ = _token_bundle(tmp_path)
    bad = WordTokenizer(vocab=VOCAB, max_length=L + 1)
    bad.save(root / "tokenizer.json")
    rt = UncertaintyRuntime(root, verify=False)
    with pytest.raises(ManifestError, match="max_length"):
        rt.tokenize(["good"])


# ----------------------------------------------------------------------------- categorical noise

def test_categorical_noise_is_one_hot_uniform_with_mean_one_over_k():
    spec = NoiseSpec("member", "categorical", (4,), {"k": 4})
    draw = sample_noise([spec], 20000, np.random.default_rng(0))["member"]
    assert draw.dtype == np.float32 and draw.shape == (20000, 4)
    assert np.all(draw.sum(axis=1) == 1) and set(np.unique(draw)) == {0.0, 1.0}
    freq = draw.mean(axis=0)
    assert np.allclose(freq, 0.25, atol=0.015)
    assert np.allclose(mean_noise([spec], 3)["member"], 0.25)
    again = sample_noise([spec], 20000, np.random.default_rng(0))["member"]
    assert np.array_equal(draw, again)


@pytest.mark.parametrize("shape, params, match", [
    ((4,), {}, "integer k >= 2"),
    ((4,), {"k": 1}, "integer k >= 2"),
    ((4,), {"k": 3}, "must end with k = 3"),
    ((4,), {"k": 2.5}, "integer k"),
])
def test_categorical_noise_spec_validation(shape, params, match):
    with pytest.raises(ManifestError, match=match):
        NoiseSpec("member", "categorical", shape, params)


def test_categorical_manifest_round_trip():
    m = make_manifest(noise=(NoiseSpec("mask_0", "categorical", (8,), {"k": 8}),),
                      files={"trunk.onnx": "ab" * 32, "head.onnx": "cd" * 32})
    again = Manifest.from_json(json.loads(m.dumps()))
    assert again == m and again.noise[0].params == {"k": 8}
    assert dataclasses.replace(m).noise[0].kind == "categorical"
