"""Export and bundle a text model through the common stages.

A text model is a ``bert``-trunk model (:mod:`edgeuq.models.trunks`, built from its
:class:`~edgeuq.models.config.ModelConfig` by the scheme registry); a
:class:`~edgeuq.text.classifier.TextClassifier` (or its
:class:`~edgeuq.text.ood.WithOODFeatures` wrapper) is converted to one first (``as_model``).
:func:`export_text_bundle` then runs the same three stages as a signal model:

    save_checkpoint (with the WordPiece tokenizer.json beside the weights)
      -> export_onnx  (edgeuq.export: trunk tokens (B, T) int64 -> features, head features,
                       noise_k -> logits; ONNX Runtime == PyTorch on random padded ids, same noise)
      -> build_bundle (edgeuq.bundle: manifest v1 through the runtime's write_bundle, verified)

so the bundle keeps its single ``tokens`` input (the padding mask is computed inside the trunk)
and ships the device WordPiece tokenizer (``"kind": "wordpiece"``), and
``UncertaintyRuntime.predict_text`` reproduces the host's token ids. The export is also checked on
the tokenized ``check_texts`` (real sentences), failing loudly beyond ``atol``; nothing is left in
``out_dir`` by a failed export (the checkpoint and the graphs are built in a temporary folder).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np
import torch

from edgeuq_runtime.bundle import Bundle
from edgeuq_runtime.noise import sample_noise
from edgeuq_runtime.wordpiece import WordPieceTokenizer

from ..bundle import build_bundle
from ..export import export_onnx
from ..export.onnx_export import FEATURE_NAME as FEATURES
from ..export.onnx_export import LOGITS_NAME as LOGITS
from ..export.onnx_export import OPSET
from ..export.onnx_export import TOKEN_INPUT_NAME as TOKEN_INPUT
from ..export.onnx_export import TOKENIZER_FILE
from ..models.transformer import DeployableModel
from ..training import save_checkpoint

__all__ = ["export_text_bundle", "max_export_difference", "as_text_model", "TOKEN_INPUT", "FEATURES", "LOGITS",
           "OPSET"]


def as_text_model(model: Any, max_length: int) -> DeployableModel:
    """``model`` as a model built from its ModelConfig: a ``bert``-trunk model as it is, a
    TextClassifier / WithOODFeatures through its ``as_model(max_length)``."""
    if isinstance(model, DeployableModel):
        return model
    convert = getattr(model, "as_model", None)
    if convert is None:
        raise TypeError(f"cannot export a {type(model).__name__}: give a model built from a ModelConfig "
                        f"(edgeuq.models.build_model) or a TextClassifier")
    return convert(max_length)


def _positions(model: Any) -> int:
    cfg = model.cfg
    opts = getattr(cfg, "trunk_options", None)
    return int(opts.max_positions if opts is not None else cfg.max_position_embeddings)


def _example_ids(tokenizer: WordPieceTokenizer, texts: Sequence[str], rng: np.random.Generator) -> np.ndarray:
    real = tokenizer.encode_batch(list(texts)) if texts else np.zeros((0, tokenizer.max_length), np.int64)
    rand = rng.integers(1, tokenizer.vocab_size, size=(2, tokenizer.max_length))
    rand[0, tokenizer.max_length // 2:] = tokenizer.pad_id
    return np.concatenate([real, rand.astype(np.int64)])


def max_export_difference(model: Any, trunk_path: Path, head_path: Path, ids: np.ndarray,
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


def export_text_bundle(model: Any, tokenizer: WordPieceTokenizer, out_dir: Path, class_names: Sequence[str],
                       model_name: str, model_version: str = "1", default_samples: int = 32,
                       check_texts: Sequence[str] = (), atol: float = 1e-4,
                       metadata: Optional[Mapping[str, Any]] = None, overwrite: bool = False) -> Bundle:
    """Checkpoint, export (verified against PyTorch) and bundle ``model`` to ``out_dir`` through the
    common stages (module docstring); returns the verified bundle."""
    n_classes = int(model.num_classes)
    if len(class_names) != n_classes:
        raise ValueError(f"{len(class_names)} class names for a {n_classes}-class model")
    if tokenizer.max_length > _positions(model):
        raise ValueError(f"tokenizer max_length {tokenizer.max_length} exceeds the model's "
                         f"{_positions(model)} positions")
    net = as_text_model(model, tokenizer.max_length)
    cfg = net.cfg
    if tokenizer.vocab_size != cfg.vocab_size:
        raise ValueError(f"tokenizer vocab {tokenizer.vocab_size} != model vocab {cfg.vocab_size}")
    if tokenizer.max_length != cfg.input_length:
        raise ValueError(f"tokenizer max_length {tokenizer.max_length} != the model's input_length "
                         f"{cfg.input_length}")
    net.eval()
    net.set_sampling(False)
    ids = _example_ids(tokenizer, check_texts, np.random.default_rng(0))
    with tempfile.TemporaryDirectory(prefix="edgeuq-text-export-") as tmp:
        tmp = Path(tmp)
        (tmp / "checkpoint").mkdir()
        tokenizer.save(tmp / "checkpoint" / TOKENIZER_FILE)  # export_onnx copies it into the export
        ckpt = save_checkpoint(net, tmp / "checkpoint", tuple(class_names), sample_rate_hz=1.0, normalization="none")
        art = export_onnx(ckpt, tmp / "onnx", model=net, atol=atol)
        diff = max_export_difference(net, art.trunk_path, art.head_path, ids)
        if not (diff["features"] <= atol and diff["logits"] <= atol * diff["logit_scale"]):  # NaN-safe
            raise RuntimeError(f"exported graphs disagree with PyTorch: {diff} (tolerance {atol:g}, logits "
                               f"relative to max(1, |logit|))")
        # the export records the density columns (art.density_columns); the bundle's manifest carries them
        meta: Dict[str, Any] = {"scheme": cfg.scheme, "export_max_abs_diff": diff, **dict(metadata or {})}
        return build_bundle(art, Path(out_dir), model_name, model_version, default_samples=default_samples,
                            metadata=meta, overwrite=overwrite)
