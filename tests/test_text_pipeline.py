"""Text: TSV loading, word tokenizer (host == device ids), token model -> ONNX -> bundle -> runtime."""
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeuq.bayes import fit_model
from edgeuq.data import (
    DataError, build_word_tokenizer, load_sst2, load_trec, read_text_tsv, tokenize_dataset,
)
from edgeuq.bundle import build_bundle
from edgeuq.export import TOKENIZER_FILE, export_onnx, max_abs_difference
from edgeuq.models import ModelConfig, SignalTransformer, mc_sample_probs
from edgeuq.training import TrainConfig, save_checkpoint
from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.noise import sample_noise_tiled


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CLASSES = ("negative", "positive")
TRICKY = ["A film's \"best\" moments -- aren't enough!", "Ça va? naïve café", "  tabs\tand\nnewlines  ",
          "ﬁne ＦＵＬＬＷＩＤＴＨ", "", "1999 ... 2,000 $ 5.5", "emoji 🙂 and ?!?"]


def text_data_dir() -> Path:
    env = os.environ.get("EDGEUQ_TEXT_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "data" / "text"


@pytest.fixture(scope="module")
def text_dir() -> Path:
    root = text_data_dir()
    if not (root / "sst2").is_dir() or not (root / "trec").is_dir():
        pytest.skip(f"SST-2/TREC not found at {root} (set EDGEUQ_TEXT_DIR)")
    return root


def _corpus(n: int, seed: int):
    rng = np.random.default_rng(seed)
    pos, neg, filler = ["good", "great", "fun"], ["bad", "dull", "awful"], ["the", "film", "is", "a", "plot", "very"]
    texts, labels = [], []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(filler, rng.integers(2, 6))) + [str(rng.choice(pos if y else neg))]
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(y)
    return texts, np.array(labels)


def test_read_tsv_labels_by_index_or_name(tmp_path):
    p = tmp_path / "a.tsv"
    p.write_text("sentence\tlabel\ngood film\t1\nbad film\tnegative\n")
    ds = read_text_tsv(p, CLASSES)
    assert ds.texts == ("good film", "bad film") and ds.y.tolist() == [1, 0]
    p.write_text("sentence\tlabel\ngood film\tmaybe\n")
    with pytest.raises(DataError, match="not among the classes"):
        read_text_tsv(p, CLASSES)
    assert read_text_tsv(p, CLASSES, allow_unknown=True).y.tolist() == [-1]
    p.write_text("text\tother\nwhat is it ?\tx\n")
    assert read_text_tsv(p, CLASSES).y.tolist() == [-1]
    p.write_text("words\nx\n")
    with pytest.raises(DataError, match="no text column"):
        read_text_tsv(p, CLASSES, header=True)


def test_read_tsv_without_header_and_forgiving_labels(tmp_path):
    p = tmp_path / "b.tsv"
    p.write_text("great film\t1\nawful film\tNEGATIVE\nfine film\tPositive\n")  # no header row
    ds = read_text_tsv(p, CLASSES)
    assert ds.texts == ("great film", "awful film", "fine film") and ds.y.tolist() == [1, 0, 1]
    p.write_text("good\tmeh\tpos\nbad\tugh\tneg\n")  # columns by index, labels through a map
    ds = read_text_tsv(p, CLASSES, text_column=0, label_column=2, label_map={"pos": "positive", "neg": "negative"})
    assert ds.texts == ("good", "bad") and ds.y.tolist() == [1, 0]
    with pytest.raises(DataError, match=r"labels \['neg', 'pos'\] are not among the classes"):
        read_text_tsv(p, CLASSES, label_column=2)
    p.write_text("only text here\nand more\n")  # one column: unlabelled
    assert read_text_tsv(p, CLASSES).y.tolist() == [-1, -1]


def test_vocabulary_is_frequency_ordered_with_min_freq():
    tok = build_word_tokenizer(["b a a", "c a b", "d"], max_length=4, min_freq=2)
    assert tok.vocab == ("[PAD]", "[UNK]", "a", "b")
    assert tok.encode("a c b") == [2, 1, 3, 0]
    with pytest.raises(DataError, match="no word"):
        build_word_tokenizer(["x y"], 4, min_freq=3)


@pytest.fixture(scope="module")
def text_bundle(tmp_path_factory):
    d = tmp_path_factory.mktemp("text")
    texts, y = _corpus(400, 0)
    vtexts, vy = _corpus(100, 1)
    tok = build_word_tokenizer(texts, max_length=8, min_freq=1)
    x, xv = tok.encode_batch(texts), tok.encode_batch(vtexts)
    torch.manual_seed(0)
    cfg = ModelConfig(input_length=8, num_classes=2, patch=1, embed="token", vocab_size=tok.vocab_size, d_model=16,
                      heads=2, depth=2, ffn=32, dropout=0.1, stochastic_blocks=(1,))
    m = SignalTransformer(cfg)
    fit_model(m, x, y, xv, vy, TrainConfig(epochs=5, batch_size=32, lr=5e-3), progress=False)
    ck = save_checkpoint(m, d / "ck", CLASSES, 1.0, "none")
    tok.save(ck.directory / TOKENIZER_FILE)
    art = export_onnx(ck, d / "onnx")
    bundle = build_bundle(art, d / "bundle", "toy-sst", "0.1.0", default_samples=8)
    return m, tok, art, bundle, (vtexts, vy)


def test_token_model_export_bundle_and_runtime_agree(text_bundle):
    m, tok, art, bundle, (vtexts, vy) = text_bundle
    assert art.input_dtype == "int64" and art.vocab_size == tok.vocab_size and art.tokenizer_file == TOKENIZER_FILE
    assert max_abs_difference(m, art, batch=3, samples=4, seed=0) < 1e-4
    spec = bundle.manifest.input
    assert (spec.dtype, spec.normalization, spec.vocab_size, spec.tokenizer) == \
        ("int64", "none", tok.vocab_size, TOKENIZER_FILE)
    assert TOKENIZER_FILE in bundle.manifest.files
    rt = UncertaintyRuntime(bundle.root, seed=0)
    ids = rt.tokenize(vtexts)
    assert np.array_equal(ids, tok.encode_batch(vtexts))
    r = rt.predict_text(vtexts, samples=6, seed=5)
    noise = sample_noise_tiled(rt.manifest.noise, 6, len(vtexts), np.random.default_rng(5))  # what predict draws
    p_torch = mc_sample_probs(m, torch.from_numpy(ids), 6, noise=noise).numpy()
    assert np.abs(r.samples - p_torch).max() < 1e-5
    assert float(np.mean(r.prediction == vy)) > 0.9  # the toy sentiment is learnt


def test_device_tokenizer_reproduces_host_ids_on_tricky_text(text_bundle):
    _, tok, _, bundle, _ = text_bundle
    rt = UncertaintyRuntime(bundle.root)
    assert np.array_equal(rt.tokenize(TRICKY), tok.encode_batch(TRICKY))


def test_device_tokenizer_reproduces_host_ids_on_sst2_and_trec(text_dir, tmp_path):
    sst = load_sst2(text_dir / "sst2")
    trec = load_trec(text_dir / "trec")
    assert (len(sst["train"]), len(sst["dev"]), len(sst["test"]), len(trec)) == (60614, 6735, 872, 500)
    assert set(np.unique(sst["test"].y)) == {0, 1} and np.all(trec.y == -1)
    tok = build_word_tokenizer(sst["train"].texts, max_length=48, min_freq=2)
    device = type(tok).load(tok.save(tmp_path / TOKENIZER_FILE))
    for ds in (sst["test"], sst["dev"], trec):
        assert np.array_equal(device.encode_batch(ds.texts), tokenize_dataset(tok, ds).x), ds.name
