"""A tiny randomly initialised BERT of MiniLM's architecture, saved as a model folder
(config.json, model.safetensors, WordPiece tokenizer.json) that ``load_pretrained``
reads like the packaged one, and a tiny sentiment corpus with non-SST label spellings."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from edgeuq.models.bert import BertConfig, BertEncoder

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
POSITIVE = ["good", "great", "fun", "superb"]
NEGATIVE = ["bad", "dull", "awful", "boring"]
FILLER = ["the", "film", "is", "a", "plot", "very", "movie", "story", "was", "quite"]
QUESTIONS = ["what", "where", "who", "city", "capital", "year", "?"]
WORDS = POSITIVE + NEGATIVE + FILLER + QUESTIONS + ["##s", "!", ",", "."]


def tiny_config(max_positions: int = 24, layers: int = 2) -> BertConfig:
    return BertConfig(vocab_size=len(SPECIALS) + len(WORDS), hidden_size=32, num_hidden_layers=layers,
                      num_attention_heads=4, intermediate_size=48, max_position_embeddings=max_positions)


def tokenizer_json() -> dict:
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    return {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": vocab[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                          "normalized": False, "special": True} for t in SPECIALS],
        "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                       "strip_accents": None, "lowercase": True},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", vocab["[SEP]"]],
                           "cls": ["[CLS]", vocab["[CLS]"]]},
        "decoder": None,
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab},
    }


def write_tiny_model(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """A model folder ``load_pretrained(folder)`` reads (safetensors of a random encoder)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = tiny_config(layers=layers)
    torch.manual_seed(seed)
    enc = BertEncoder(cfg)
    (folder / "config.json").write_text(json.dumps(cfg.to_json()))
    save_file({k: v.contiguous() for k, v in enc.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer_json()))
    return folder


def sentiment_rows(n: int, seed: int, pos_label: str = "Thumbs-Up", neg_label: str = "thumbs down"):
    """(text, label) rows: a sentiment word among filler words decides the label."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        y = int(rng.integers(0, 2))
        words = list(rng.choice(FILLER, int(rng.integers(2, 6)))) + [str(rng.choice(POSITIVE if y else NEGATIVE))]
        rng.shuffle(words)
        rows.append((" ".join(words), pos_label if y else neg_label))
    return rows


def questions(n: int, seed: int):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(QUESTIONS[:-1], int(rng.integers(2, 5)))) + " ?" for _ in range(n)]


def write_tsv(path: Path, header, rows) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def padded_ids(n: int, vocab_size: int, length: int, seed: int) -> np.ndarray:
    """(n, length) int64 random token ids 1..vocab_size-1, each row right-padded with 0 after a seeded
    random length in [3, length]."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, vocab_size, size=(n, length))
    for i in range(n):
        ids[i, int(rng.integers(3, length + 1)):] = 0
    return ids.astype(np.int64)


def tiny_text_teacher(d: Path, layers: int = 2, ood_features: str = "none"):
    """A TextTeacher artifact (Laplace head, density features ``ood_features``, default none) fine-tuned
    on the tiny sentiment corpus over a random tiny BERT of ``layers`` layers (its top layer), in
    ``d / "teacher"``; the pretrained model folder is ``d / "model"``."""
    from edgeuq.data.sources import DataOptions
    from edgeuq.text.pipeline import TeacherOptions, train_text_teacher

    cols = ["review", "verdict"]
    train = write_tsv(d / "train.tsv", cols, sentiment_rows(60, 0))
    val = write_tsv(d / "val.tsv", cols, sentiment_rows(16, 1))
    test = write_tsv(d / "test.tsv", cols, sentiment_rows(16, 2))
    return train_text_teacher(train, d / "teacher", TeacherOptions(train_layers=1, epochs=8, lr=3e-3, lr_head=3e-2,
                                                                   batch=8, max_length=12, samples=8,
                                                                   schemes=("laplace",), ood_features=ood_features),
                              val=val, test=test, model=write_tiny_model(d / "model", layers=layers),
                              data_options=DataOptions(text_column="review", label_column="verdict"),
                              log=lambda m: None)


#: the vocab -> distill -> posterior options of the text-student recipe, sized for a tiny teacher
TINY_CHAIN_OVERRIDES = (("vocab", "rank", 8), ("distill", "epochs", 2), ("distill", "batch_size", 16),
                        ("distill", "density_weight", 0.0),   # the tiny teachers carry no density feature
                        ("distill", "teacher_samples", 4), ("distill", "student_samples", 2), ("posterior", "rows", 0),
                        ("posterior", "samples", 8))

#: phrases a student's bundle is checked on (:func:`student_bundle_error`)
CHECK_TEXTS = ("the film is good", "a very dull plot", "what city is the capital ?", "superb !")


def tiny_text_student(d: Path, steps, overrides, layers: int = 2, options=None):
    """(TextTeacher, TextStudent): :func:`tiny_text_teacher` of ``layers`` layers in ``d``, then the
    ``text-student`` recipe's chain with ``steps`` / ``overrides`` over it into ``d / "student"``
    (quiet). Skips without the text extra."""
    from require_extras import require_extra

    require_extra("safetensors", "text")
    from edgeuq.text.student_chain import build_text_student

    teacher = tiny_text_teacher(d, layers=layers)
    return teacher, build_text_student(teacher.directory, d / "student", "text-student", steps=steps,
                                       overrides=overrides, options=options, log=lambda m: None)


def student_bundle_error(student, texts=CHECK_TEXTS, samples: int = 8, seed: int = 5, bundle=None):
    """(max |device predict_text samples - PyTorch mc_sample_probs| with the same noise rows,
    the same with other noise rows) for a text student (:class:`edgeuq.text.student_chain.TextStudent`);
    also checks that the device tokenizer is the student's."""
    from edgeuq.compress.chain import tokenizer_of
    from edgeuq.models import mc_sample_probs
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.noise import sample_noise_rows

    texts = list(texts)
    model = student.checkpoint.load_model().eval()
    tok = tokenizer_of(student.checkpoint)
    rt = UncertaintyRuntime(student.bundle if bundle is None else bundle)
    ids = tok.encode_batch(texts)
    assert np.array_equal(rt.tokenize(texts), ids)                         # the device tokenizer is the pruned one
    got = rt.predict_text(texts, samples=samples, seed=seed).samples
    errs = []
    for s in (seed, seed + 1):
        noise = sample_noise_rows(model.noise_specs(), samples * len(texts), np.random.default_rng(s))
        with torch.no_grad():
            want = mc_sample_probs(model, torch.from_numpy(ids), samples, noise=noise).numpy()
        errs.append(float(np.max(np.abs(got - want))))
    return errs[0], errs[1]
