"""Export a :class:`~edgeuq.text.classifier.TextClassifier` with the project's
conventions and bundle it for the device runtime.

trunk.onnx : tokens (B, T) int64 -> features (B, d)         (padding mask = ids != pad, inside the graph)
head.onnx  : features (N, d), noise_k (N, *shape_k) -> logits (N, C)

Noise are graph inputs (MC-dropout keep masks, or the Laplace ``standard_normal``
eps), the head rows are s-major tiles, exactly as ``edgeuq.export`` does for
signal models. The bundle ships the device WordPiece tokenizer JSON
(``"kind": "wordpiece"``), so ``UncertaintyRuntime.predict_text`` reproduces the
host's token ids. Export is verified: ONNX Runtime vs PyTorch on real and random
ids with identical noise, failing loudly beyond ``atol``; nothing is left in
``out_dir`` by a failed export (files are built in a temporary folder first).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from edgeuq_runtime.bundle import Bundle, load_bundle, write_bundle
from edgeuq_runtime.manifest import GraphSpec, InputSpec, Manifest
from edgeuq_runtime.noise import sample_noise
from edgeuq_runtime.wordpiece import WordPieceTokenizer

from .classifier import TextClassifier

__all__ = ["export_text_bundle", "max_export_difference", "TOKEN_INPUT", "FEATURES", "LOGITS", "OPSET"]

TOKEN_INPUT, FEATURES, LOGITS = "tokens", "features", "logits"
TOKENIZER_FILE = "tokenizer.json"
OPSET = 17


class _Trunk(nn.Module):
    def __init__(self, model: TextClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(ids)


class _Head(nn.Module):
    def __init__(self, model: TextClassifier, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.names = tuple(names)

    def forward(self, feats: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        return self.model.head_forward(feats, dict(zip(self.names, noise)))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list, outputs: list) -> None:
    module.eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes={n: {0: "batch"} for n in inputs + outputs}, opset_version=OPSET,
                          dynamo=False, do_constant_folding=True)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _example_ids(tokenizer: WordPieceTokenizer, texts: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    real = tokenizer.encode_batch(list(texts)) if texts else np.zeros((0, tokenizer.max_length), np.int64)
    rand = rng.integers(1, tokenizer.vocab_size, size=(2, tokenizer.max_length))
    rand[0, tokenizer.max_length // 2:] = tokenizer.pad_id
    return np.concatenate([real, rand.astype(np.int64)])


def max_export_difference(model: TextClassifier, trunk_path: Path, head_path: Path, ids: np.ndarray,
                          samples: int = 4, seed: int = 1) -> Dict[str, float]:
    """Max |difference| of features and of logits, PyTorch vs ONNX Runtime, same noise."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    trunk = ort.InferenceSession(str(trunk_path), opts, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(head_path), opts, providers=["CPUExecutionProvider"])
    specs = model.noise_specs()
    noise = sample_noise(specs, len(ids) * samples, np.random.default_rng(seed))
    f_ort = trunk.run([FEATURES], {TOKEN_INPUT: ids})[0]
    z_ort = head.run([LOGITS], {FEATURES: np.tile(f_ort, (samples, 1)), **noise})[0]
    with torch.no_grad():
        f_pt = model.trunk(torch.from_numpy(ids))
        z_pt = model.head_forward(f_pt.repeat(samples, 1), {k: torch.from_numpy(v) for k, v in noise.items()})
    return {"features": float(np.max(np.abs(f_ort - f_pt.numpy()))),
            "logits": float(np.max(np.abs(z_ort - z_pt.numpy()))),
            # float32 error grows with the logits' size (a broad Laplace posterior samples large ones)
            "logit_scale": float(max(1.0, np.max(np.abs(z_pt.numpy()))))}


def _density_columns(model) -> Dict[str, Any]:
    """``{"density_columns": [A, B]}`` for a model whose trunk emits extra features for the density
    (:class:`edgeuq.text.ood.WithOODFeatures`); ``edgeuq calibrate`` fits the density on those columns."""
    cols = getattr(model, "density_columns", None)
    return {} if cols is None else {"density_columns": [int(cols[0]), int(cols[1])]}


def export_text_bundle(model: TextClassifier, tokenizer: WordPieceTokenizer, out_dir: Path, class_names: Sequence[str],
                       model_name: str, model_version: str = "1", default_samples: int = 32,
                       check_texts: Sequence[str] = (), atol: float = 1e-4,
                       metadata: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> Bundle:
    """Export, verify against PyTorch, and write a verified bundle to ``out_dir``."""
    if len(class_names) != model.num_classes:
        raise ValueError(f"{len(class_names)} class names for a {model.num_classes}-class model")
    if tokenizer.vocab_size != model.cfg.vocab_size:
        raise ValueError(f"tokenizer vocab {tokenizer.vocab_size} != model vocab {model.cfg.vocab_size}")
    if tokenizer.max_length > model.cfg.max_position_embeddings:
        raise ValueError(f"tokenizer max_length {tokenizer.max_length} exceeds the model's "
                         f"{model.cfg.max_position_embeddings} positions")
    model.eval()
    model.set_sampling(False)
    specs = model.noise_specs()
    names = [s.name for s in specs]
    rng = np.random.default_rng(0)
    ids = _example_ids(tokenizer, check_texts, rng)
    with tempfile.TemporaryDirectory(prefix="edgeuq-text-export-") as tmp:
        tmp = Path(tmp)
        x = torch.from_numpy(ids[-2:])
        with torch.no_grad():
            feats = model.trunk(x)
        noise = sample_noise(specs, 2, rng)
        _export(_Trunk(model), (x,), tmp / "trunk.onnx", [TOKEN_INPUT], [FEATURES])
        _export(_Head(model, names), (feats, *[torch.from_numpy(noise[n]) for n in names]), tmp / "head.onnx",
                [FEATURES, *names], [LOGITS])
        tokenizer.save(tmp / TOKENIZER_FILE)
        diff = max_export_difference(model, tmp / "trunk.onnx", tmp / "head.onnx", ids)
        if not (diff["features"] <= atol and diff["logits"] <= atol * diff["logit_scale"]):  # NaN-safe
            raise RuntimeError(f"exported graphs disagree with PyTorch: {diff} (tolerance {atol:g}, logits "
                               f"relative to max(1, |logit|))")
        manifest = Manifest(
            model_name=model_name, model_version=model_version,
            input=InputSpec(name=TOKEN_INPUT, length=tokenizer.max_length, sample_rate_hz=1.0, dtype="int64",
                            normalization="none", vocab_size=tokenizer.vocab_size, tokenizer=TOKENIZER_FILE),
            class_names=tuple(class_names), default_samples=int(default_samples), noise=tuple(specs),
            trunk=GraphSpec(file="trunk.onnx", inputs=(TOKEN_INPUT,), outputs=(FEATURES,)),
            head=GraphSpec(file="head.onnx", inputs=(FEATURES, *names), outputs=(LOGITS,)),
            feature_name=FEATURES, logits_name=LOGITS, backend="onnxruntime",
            metadata={"created_by": "edgeuq.text", "opset": OPSET, "scheme": model.scheme,
                      "export_max_abs_diff": diff, **_density_columns(model), **dict(metadata or {})},
        )
        write_bundle(Path(out_dir), manifest, {"trunk.onnx": tmp / "trunk.onnx", "head.onnx": tmp / "head.onnx",
                                               TOKENIZER_FILE: tmp / TOKENIZER_FILE}, overwrite=overwrite)
    return load_bundle(Path(out_dir), verify=True)
