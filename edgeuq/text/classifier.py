"""A pretrained BERT encoder with a stochastic classification head.

    ids -> BertEncoder (all layers) -> masked mean pool -> features (d,)      trunk, once per input
    features -> drop_in -> fc1 -> GELU -> drop_hidden -> fc2 -> logits        head, S times

The stochastic part lives in the head, so the trunk (the whole encoder,
~99 % of the compute) runs once and the head S times:

``mc_dropout``
    ``drop_in`` / ``drop_hidden`` are :class:`~edgeuq.schemes.mc_dropout.MCDropout`
    whose keep masks are head-graph inputs (``dropout_mask`` noise).
``laplace``
    ``fc2`` is :class:`~edgeuq.schemes.laplace.LastLayerLaplace` (K-FAC GGN
    posterior, ``standard_normal`` noise input of C entries); the dropouts are
    training-only.

Both schemes share one set of trained weights (training uses dropout; the
Laplace posterior is fitted afterwards), so a single fine-tuning run gives both
heads. Fine-tuning trains the top ``train_layers`` encoder layers and the head;
the layers below are frozen and their outputs cached (``edgeuq.text.finetune``).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import torch
from torch import nn

from edgeuq_runtime.noise import NoiseSpec

from ..models.layers import NoiseDict
from ..models.transformer import DeployableModel, build_model
from ..models.config import bert_model_config
from ..models.trunks import load_head_state
from ..schemes.laplace import LastLayerLaplace
from ..schemes.mc_dropout import MCDropout
from ..models.bert import BertConfig, BertEncoder, FactorisedEmbeddings, masked_mean_pool
from .heads import TextHead, text_head, text_scheme_names

__all__ = ["TextClassifier", "TEXT_SCHEMES", "POSTERIOR_SCHEMES"]

#: Schemes that declare a text head (``Scheme.text_head``; its sites are the stochastic layers).
TEXT_SCHEMES = text_scheme_names()
#: Schemes whose stochastic layer is a posterior fitted after training (the last layer, ``fc2``).
POSTERIOR_SCHEMES = tuple(name for name in TEXT_SCHEMES if text_head(name).post_hoc_posterior)


class TextClassifier(nn.Module):
    def __init__(self, cfg: BertConfig, num_classes: int = 2, hidden: int = 256, dropout: float = 0.1,
                 head_dropout: float = 0.2, scheme: str = "mc_dropout") -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        self.cfg = cfg
        self.scheme = scheme  # validated: the scheme must have a text head
        self.num_classes = int(num_classes)
        self.hidden = int(hidden)
        self.head_dropout = float(head_dropout)
        d = cfg.hidden_size
        self.encoder = BertEncoder(cfg, dropout=dropout)
        self.drop_in = MCDropout("head_in", head_dropout, (d,))
        self.fc1 = nn.Linear(d, hidden)
        self.drop_hidden = MCDropout("head_hidden", head_dropout, (hidden,))
        self.fc2 = LastLayerLaplace("head_laplace", hidden, num_classes, structure="kron")

    # -- scheme ----------------------------------------------------------------------
    @property
    def scheme(self) -> str:
        return self._scheme

    @scheme.setter
    def scheme(self, name: str) -> None:
        self._head = text_head(name)  # raises for a scheme without a text head
        self._scheme = name

    @property
    def head(self) -> TextHead:
        """The text head of the current scheme (its stochastic sites and capabilities)."""
        return self._head

    @contextmanager
    def using(self, scheme: str) -> Iterator["TextClassifier"]:
        """Run the block with the head of ``scheme``; the previous scheme is restored after it."""
        old = self.scheme
        self.scheme = scheme
        try:
            yield self
        finally:
            self.scheme = old

    # -- split -----------------------------------------------------------------------
    @property
    def feature_dim(self) -> int:
        return self.cfg.hidden_size

    def trunk(self, ids: torch.Tensor) -> torch.Tensor:
        h, mask = self.encoder(ids)
        return masked_mean_pool(h, mask)

    def trunk_from_hidden(self, h: torch.Tensor, mask: torch.Tensor, start: int) -> torch.Tensor:
        """Features from cached hidden states entering layer ``start``."""
        return masked_mean_pool(self.encoder.run_layers(h, mask, start), mask)

    def _stochastic(self) -> List[nn.Module]:
        return [getattr(self, name) for name in self._head.sites]

    def noise_specs(self) -> List[NoiseSpec]:
        return [m.noise_spec() for m in self._stochastic()]

    def set_sampling(self, on: bool) -> None:
        for m in self._stochastic():
            m.sampling = bool(on)

    def head_forward(self, feats: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        sites = self._head.sites

        def noise_of(name: str) -> Optional[NoiseDict]:
            return noise if name in sites else None

        x = self.drop_in(feats, noise_of("drop_in"))
        x = self.drop_hidden(nn.functional.gelu(self.fc1(x)), noise_of("drop_hidden"))
        return self.fc2(x, noise_of("fc2"))

    @property
    def last_layer(self) -> nn.Module:
        return self.fc2

    def head_parameters(self) -> List[nn.Parameter]:
        """The head's trained parameters (fine-tuning's head group; the posterior factors are buffers)."""
        return list(self.fc1.parameters()) + [self.fc2.weight, self.fc2.bias]

    def last_layer_input(self, feats: torch.Tensor) -> torch.Tensor:
        """Input of ``fc2`` in the deterministic pass (Laplace fitting)."""
        return nn.functional.gelu(self.fc1(feats))

    def forward(self, ids: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        return self.head_forward(self.trunk(ids), noise)

    # -- the same network as a ModelConfig trunk (edgeuq.models.trunks) -------------------
    def model_config(self, max_length: int, **fields: Any):
        """The :class:`~edgeuq.models.config.ModelConfig` (trunk ``bert``) of this classifier reading
        ``max_length`` token ids; ``fields`` override (e.g. ``trunk_options``)."""
        rank = self.encoder.embeddings.rank if isinstance(self.encoder.embeddings, FactorisedEmbeddings) else 0
        opts = {"embedding_rank": rank, **dict(fields.pop("trunk_options", None) or {})}
        return bert_model_config(self.cfg, self.num_classes, max_length, scheme=self.scheme, head_hidden=self.hidden,
                                 head_dropout=self.head_dropout, trunk_options=opts, **fields)

    def trunk_state(self) -> Dict[str, torch.Tensor]:
        """This classifier's weights under the trunk model's names (``fc1``/``fc2`` -> ``head.fc1``/``head.fc2``)."""
        return {("head." + k if k.startswith(("fc1.", "fc2.")) else k): v for k, v in self.state_dict().items()}

    def as_model(self, max_length: int) -> DeployableModel:
        """The same network, built from its ModelConfig by the scheme registry (:func:`build_model`),
        with these weights (the posterior factors too, for a posterior scheme)."""
        model = build_model(self.model_config(max_length))
        load_head_state(model, self.trunk_state())
        return model.eval()

    def config_json(self) -> dict:
        return {"bert": self.cfg.to_json(), "num_classes": self.num_classes, "hidden": self.hidden,
                "head_dropout": self.head_dropout, "scheme": self.scheme}

    @classmethod
    def from_config_json(cls, data: dict) -> "TextClassifier":
        return cls(BertConfig.from_json(data["bert"]), num_classes=data["num_classes"], hidden=data["hidden"],
                   head_dropout=data["head_dropout"], scheme=data["scheme"])
