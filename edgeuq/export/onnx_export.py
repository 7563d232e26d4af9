"""ONNX export with all randomness as explicit graph inputs, split into
a deterministic trunk graph and a stochastic head graph.

trunk.onnx : signal (B, L)                           -> features (B, *feature_shape)
head.onnx  : features (N, *feature_shape), noise_k (N, *shape_k) ... -> logits (N, C)

N = S * B when the runtime stacks S samples (s-major). Dropout masks are plain
``Mul`` inputs, so every lowerer and executor (ONNX Runtime, TVM, hls4ml) runs the same graph.
"""
from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple

import numpy as np
import onnx
import torch
from torch import nn

from edgeuq_runtime.noise import NoiseSpec, noise_specs_from_json, sample_noise

from ..artifact import Artifact, ArtifactWriter
from ..hostcpu import host_ort_session
from ..models import SignalTransformer
from ..schemes import get_scheme
from ..training import Checkpoint
from ..training.checkpoint import TOKENIZER_FILE

__all__ = ["OnnxArtifact", "export_onnx", "load_onnx_artifact", "INPUT_NAME", "FEATURE_NAME", "LOGITS_NAME"]

INPUT_NAME = "signal"
TOKEN_INPUT_NAME = "tokens"  # int64 token ids of text models (ModelConfig.embed == "token")
FEATURE_NAME = "features"
LOGITS_NAME = "logits"
OPSET = 17
_META = "export.json"


@dataclass(frozen=True)
class OnnxArtifact(Artifact):
    """The exported trunk/head graph pair (``export.json`` is the envelope)."""

    KIND: ClassVar[str] = "onnx_export"
    FORMAT_VERSION: ClassVar[int] = 3   # 3: density_columns
    META_FILE: ClassVar[str] = _META

    trunk_file: str
    head_file: str
    input_length: int
    feature_shape: Tuple[int, ...]
    noise: Tuple[NoiseSpec, ...]
    class_names: Tuple[str, ...]
    sample_rate_hz: float
    normalization: str
    opset: int = OPSET
    input_name: str = INPUT_NAME
    feature_name: str = FEATURE_NAME
    logits_name: str = LOGITS_NAME
    input_dtype: str = "float32"
    vocab_size: Optional[int] = None
    tokenizer_file: Optional[str] = None
    #: columns [A, B) of the trunk's features that are density features, not the head's input (a text
    #: trunk with ``density_features``; None: none); every bundle made from the export records them
    density_columns: Optional[Tuple[int, int]] = None

    @property
    def sha256(self) -> Mapping[str, str]:
        """File name -> sha256 of every file of the export (``digest`` also covers the metadata)."""
        return self.files

    @property
    def tokenizer_path(self) -> Optional[Path]:
        return None if self.tokenizer_file is None else self.file_path(self.tokenizer_file)

    @property
    def trunk_path(self) -> Path:
        return self.file_path(self.trunk_file)

    @property
    def head_path(self) -> Path:
        return self.file_path(self.head_file)

    def payload_files(self) -> Tuple[str, ...]:
        return (self.trunk_file, self.head_file) + ((self.tokenizer_file,) if self.tokenizer_file else ())

    def to_meta(self) -> dict:
        return {
            "trunk_file": self.trunk_file, "head_file": self.head_file, "input_length": self.input_length,
            "feature_shape": list(self.feature_shape), "noise": [s.to_json() for s in self.noise],
            "class_names": list(self.class_names), "sample_rate_hz": self.sample_rate_hz,
            "normalization": self.normalization, "opset": self.opset,
            "input_name": self.input_name, "feature_name": self.feature_name, "logits_name": self.logits_name,
            "input_dtype": self.input_dtype, "vocab_size": self.vocab_size, "tokenizer_file": self.tokenizer_file,
            "density_columns": None if self.density_columns is None else list(self.density_columns),
        }

    @classmethod
    def from_meta(cls, m: Mapping[str, Any], **base: Any) -> "OnnxArtifact":
        return cls(
            trunk_file=m["trunk_file"], head_file=m["head_file"], input_length=int(m["input_length"]),
            feature_shape=tuple(m["feature_shape"]), noise=noise_specs_from_json(m["noise"]),
            class_names=tuple(m["class_names"]), sample_rate_hz=float(m["sample_rate_hz"]),
            normalization=m["normalization"], opset=int(m["opset"]), input_name=m["input_name"],
            feature_name=m["feature_name"], logits_name=m["logits_name"], input_dtype=m["input_dtype"],
            vocab_size=m["vocab_size"], tokenizer_file=m["tokenizer_file"],
            density_columns=None if m["density_columns"] is None else tuple(int(c) for c in m["density_columns"]),
            **base,
        )


class _HeadGraph(nn.Module):
    """Positional-argument wrapper so every noise tensor becomes a named graph input."""

    def __init__(self, model: SignalTransformer, names: Tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, features: torch.Tensor, *noise: torch.Tensor) -> torch.Tensor:
        return self.model.head_forward(features, dict(zip(self.names, noise)))


class _TrunkGraph(nn.Module):
    def __init__(self, model: SignalTransformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(x)


def _export(module: nn.Module, args: tuple, path: Path, inputs: list, outputs: list) -> None:
    axes = {name: {0: "batch"} for name in inputs + outputs}
    # A fresh wrapper is in training mode; the exporter restores that mode on
    # exit, which would switch the wrapped model's dropout back on.
    module.eval()
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (no onnxscript dependency,
        # plain Mul/MatMul graphs that TVM and hls4ml import); silence its notice.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            module, args, str(path), input_names=inputs, output_names=outputs, dynamic_axes=axes,
            opset_version=OPSET, dynamo=False, do_constant_folding=True,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def export_onnx(
    checkpoint: Checkpoint,
    out_dir: Path,
    model: Optional[SignalTransformer] = None,
    verify: bool = True,
    atol: float = 1e-4,
) -> OnnxArtifact:
    """Export ``checkpoint`` to ``out_dir``/{trunk,head}.onnx and write export.json.

    With ``verify`` the graphs are run on ONNX Runtime against PyTorch with the
    same noise and the export fails loudly if they disagree beyond ``atol``.
    """
    model = model if model is not None else checkpoint.load_model()
    model.eval()
    model.set_sampling(False)
    out_dir = Path(out_dir)
    specs = model.noise_specs()
    if not specs and not get_scheme(model.cfg.scheme).deterministic_pass:
        raise ValueError("model has no stochastic layer: set stochastic_blocks or stochastic_head (or use a "
                         "one-pass scheme such as ddu / sngp)")
    names = tuple(s.name for s in specs)
    cfg = model.cfg
    tokens = cfg.embed == "token"
    input_name = TOKEN_INPUT_NAME if tokens else INPUT_NAME
    x = torch.from_numpy(example_input(cfg.input_length, cfg.vocab_size if tokens else None, 2,
                                       np.random.default_rng(0)))
    with torch.no_grad():
        feats = model.trunk(x)
    noise = {k: torch.from_numpy(v) for k, v in sample_noise(specs, 2, np.random.default_rng(0)).items()}
    with ArtifactWriter(out_dir) as w:
        _export(_TrunkGraph(model), (x,), w.path / "trunk.onnx", [input_name], [FEATURE_NAME])
        _export(
            _HeadGraph(model, names), (feats, *[noise[n] for n in names]), w.path / "head.onnx",
            [FEATURE_NAME, *names], [LOGITS_NAME],
        )
        token_fields: Dict[str, object] = {}
        if tokens:
            token_fields = {"input_name": input_name, "input_dtype": "int64", "vocab_size": cfg.vocab_size}
            src = Path(checkpoint.directory) / TOKENIZER_FILE
            if src.is_file():
                shutil.copyfile(src, w.path / TOKENIZER_FILE)
                token_fields["tokenizer_file"] = TOKENIZER_FILE
        columns = getattr(model, "density_columns", None)
        art = OnnxArtifact(
            trunk_file="trunk.onnx", head_file="head.onnx", input_length=cfg.input_length,
            feature_shape=tuple(model.feature_shape()), noise=specs, class_names=checkpoint.class_names,
            sample_rate_hz=checkpoint.sample_rate_hz, normalization=checkpoint.normalization,
            directory=w.path, inputs=checkpoint.digest, **token_fields,
            density_columns=None if columns is None else (int(columns[0]), int(columns[1])),
        )
        if verify:  # before anything reaches out_dir: a failed export leaves nothing that loads
            err = max_abs_difference(model, art, batch=3, samples=4, seed=1, relative=True)
            if not err <= atol:  # NaN-safe
                raise RuntimeError(f"exported graphs disagree with PyTorch: max |logit diff| / max(1, |logit|) "
                                   f"{err:.2e} > {atol:.0e}")
        return w.commit(art)


def load_onnx_artifact(directory: Path) -> OnnxArtifact:
    """Load and verify an export (raises ArtifactError naming the problem)."""
    return OnnxArtifact.load(Path(directory))


def run_onnx(art: OnnxArtifact, x: np.ndarray, noise: Mapping[str, np.ndarray], samples: int) -> np.ndarray:
    """Logits (S*B, C) from ONNX Runtime, features tiled s-major (reference path for tests)."""
    trunk, head = host_ort_session(art.trunk_path), host_ort_session(art.head_path)
    feats = trunk.run([art.feature_name], {art.input_name: x.astype(np.dtype(art.input_dtype))})[0]
    tiled = np.tile(feats, (samples,) + (1,) * (feats.ndim - 1))
    feeds: Dict[str, np.ndarray] = {art.feature_name: tiled, **noise}
    return head.run([art.logits_name], feeds)[0]


def example_input(length: int, vocab_size: Optional[int], batch: int, rng: np.random.Generator) -> np.ndarray:
    """Random model input: float32 windows, or (``vocab_size`` given) int64 token ids whose
    rows end in padding (id 0) of varying length, so masking is exercised."""
    if vocab_size is None:
        return rng.standard_normal((batch, length)).astype(np.float32)
    ids = rng.integers(1, vocab_size, size=(batch, length))
    for i in range(batch):
        ids[i, max(1, length - 1 - (i * length) // (batch + 1)):] = 0
    return ids.astype(np.int64)


def max_abs_difference(model: SignalTransformer, art: OnnxArtifact, batch: int, samples: int, seed: int,
                       relative: bool = False) -> float:
    """Largest |logit| difference between PyTorch and ONNX Runtime given identical noise;
    ``relative``: divided by max(1, largest |logit|) (float32 error grows with the logits, and a
    broad Laplace posterior samples large ones)."""
    rng = np.random.default_rng(seed)
    x = example_input(art.input_length, art.vocab_size, batch, rng)
    noise = sample_noise(art.noise, batch * samples, rng)
    ort_logits = run_onnx(art, x, noise, samples)
    with torch.no_grad():
        feats = model.trunk(torch.from_numpy(x)).repeat((samples,) + (1,) * len(art.feature_shape))
        torch_logits = model.head_forward(feats, {k: torch.from_numpy(v) for k, v in noise.items()}).numpy()
    err = float(np.max(np.abs(ort_logits - torch_logits)))
    return err / max(1.0, float(np.max(np.abs(torch_logits)))) if relative else err
