"""edgeuq's own BERT encoder (post-norm, GELU-erf), state-dict compatible with
``transformers``' ``BertModel`` (same parameter names, so a MiniLM / BERT
``model.safetensors`` loads with ``load_state_dict``).

Why our own module rather than wrapping ``transformers``: the encoder must
export with the project's conventions (plain MatMul/Softmax ops that ONNX
Runtime, TVM and hls4ml import; the padding mask derived inside the trunk
from the token ids, so the graph has the one ``tokens`` input the runtime
feeds; MC-dropout masks and Laplace noise as graph inputs in the head), and
the device runtime must never need ``transformers``. ``transformers`` stays the
reference implementation that tests compare against.

Input convention: ids (B, T) int64 with ``pad_id`` (0) marking padding; token
type 0 everywhere (single sentences); positions 0..T-1.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, final

import torch
from torch import nn

__all__ = ["BertConfig", "BertEncoder", "BertEmbeddings", "FactorisedEmbeddings", "masked_mean_pool", "position_rows", "MASK_BIAS"]

#: Added to attention scores of padded keys (finite for low-precision backends;
#: exp(-1e4) underflows to exactly 0 in float32, as transformers' dtype-min does).
MASK_BIAS = -1e4


@final
@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_act: str = "gelu"

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("layer_norm_eps", "hidden_act"):
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if f.name == "pad_token_id" else 1):
                raise ValueError(f"BertConfig.{f.name} must be a positive integer, got {v!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act != "gelu":
            raise ValueError(f"only hidden_act='gelu' (erf GELU) is supported, got {self.hidden_act!r}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BertConfig":
        """From a transformers ``config.json`` dict (unknown keys ignored)."""
        if data.get("model_type", "bert") != "bert":
            raise ValueError(f"expected a BERT config, got model_type {data.get('model_type')!r}")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only absolute position embeddings are supported")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self) -> Dict[str, Any]:
        return {"model_type": "bert", **{f.name: getattr(self, f.name) for f in fields(self)}}


def position_rows(table: nn.Embedding, t: int) -> torch.Tensor:
    """Rows 0..t-1 of a position table, (1, t, d); input longer than the table is refused
    (a student may keep only the positions its tokenizer emits: the ``vocab`` compression step's ``trim_positions``)."""
    n = table.num_embeddings
    if t > n:
        raise ValueError(f"input of {t} tokens is longer than the position table ({n} positions); "
                         f"tokenize with max_length <= {n}")
    return table.weight[:t].unsqueeze(0)


@final
class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def positions(self, t: int) -> torch.Tensor:
        """Rows 0..t-1 of the position table, (1, t, d) (:func:`position_rows`)."""
        return position_rows(self.position_embeddings, t)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.positions(ids.shape[1])
        typ = self.token_type_embeddings.weight[0]
        return self.LayerNorm(self.word_embeddings(ids) + pos + typ)


@final
class FactorisedEmbeddings(nn.Module):
    """BERT embeddings (:class:`~edgeuq.models.bert.BertEmbeddings`' names) whose word table is
    ``low (V, r) @ proj (r, d)``."""

    def __init__(self, cfg: BertConfig, rank: int) -> None:
        super().__init__()
        # drawn in the order the subclass of BertEmbeddings this replaces drew them (the full word table
        # drawn, then dropped), so torch's random stream after a seeded build is what it was
        torch.empty(cfg.vocab_size, cfg.hidden_size).normal_()
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.rank = int(rank)
        self.word_low = nn.Embedding(cfg.vocab_size, rank)
        self.word_proj = nn.Linear(rank, cfg.hidden_size, bias=False)

    def positions(self, t: int) -> torch.Tensor:
        return position_rows(self.position_embeddings, t)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        pos = self.positions(ids.shape[1])
        typ = self.token_type_embeddings.weight[0]
        return self.LayerNorm(self.word_proj(self.word_low(ids)) + pos + typ)

    @torch.no_grad()
    def init_svd(self, table: torch.Tensor) -> float:
        """Best rank-r approximation of ``table`` (V, d); returns its relative Frobenius error."""
        want = (self.word_low.num_embeddings, self.word_proj.out_features)
        if tuple(table.shape) != want:
            raise ValueError(f"embedding table has shape {tuple(table.shape)}, expected {want}")
        if self.rank > min(want):
            raise ValueError(f"rank {self.rank} exceeds min{want}")
        u, s, vt = torch.linalg.svd(table.double(), full_matrices=False)
        r = self.rank
        self.word_low.weight.copy_((u[:, :r] * s[:r]).float())
        self.word_proj.weight.copy_(vt[:r].T.float())
        return float(torch.sqrt((s[r:] ** 2).sum() / (s ** 2).sum()))


@final
class _SelfAttn(nn.Module):
    def __init__(self, d: int, inner: int) -> None:
        super().__init__()
        self.query, self.key, self.value = nn.Linear(d, inner), nn.Linear(d, inner), nn.Linear(d, inner)


@final
class _DenseNorm(nn.Module):
    def __init__(self, n_in: int, n_out: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        self.LayerNorm = nn.LayerNorm(n_out, eps=eps)


@final
class _Attention(nn.Module):
    def __init__(self, cfg: BertConfig, inner: int) -> None:
        super().__init__()
        self.self = _SelfAttn(cfg.hidden_size, inner)
        self.output = _DenseNorm(inner, cfg.hidden_size, cfg.layer_norm_eps)


@final
class _Intermediate(nn.Module):
    def __init__(self, cfg: BertConfig, ffn: int) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, ffn)


@final
class BertLayer(nn.Module):
    """One post-norm encoder layer; ``dropout`` applies to the attention output and
    the FFN output (as BERT's hidden dropout) during training only. ``shape`` = (heads,
    head_dim, ffn) of a pruned layer (Kwon et al. pruning, :mod:`edgeuq.compress.kwon`): the
    query/key/value rows and the attention output's columns of the kept heads, the FFN's kept
    neurons; None = ``cfg``'s widths."""

    def __init__(self, cfg: BertConfig, dropout: float = 0.1, shape: Optional[Tuple[int, int, int]] = None) -> None:
        super().__init__()
        heads, head_dim, ffn = shape if shape is not None else (cfg.num_attention_heads, cfg.head_dim,
                                                                cfg.intermediate_size)
        self.heads = int(heads)
        self.head_dim = int(head_dim)
        self.attention = _Attention(cfg, self.heads * self.head_dim)
        self.intermediate = _Intermediate(cfg, int(ffn))
        self.output = _DenseNorm(int(ffn), cfg.hidden_size, cfg.layer_norm_eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        a = self.attention.self

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(a.query(x)), split(a.key(x)), split(a.value(x))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim)) + key_bias
        ctx = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        o = self.attention.output
        x = o.LayerNorm(x + self.drop(o.dense(ctx)))
        h = nn.functional.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(x + self.drop(self.output.dense(h)))


@final
class _Layers(nn.Module):
    def __init__(self, cfg: BertConfig, dropout: float, shapes: Optional[Sequence[Tuple[int, int, int]]] = None) -> None:
        super().__init__()
        if shapes is not None and len(shapes) != cfg.num_hidden_layers:
            raise ValueError(f"{len(shapes)} layer shapes for {cfg.num_hidden_layers} layers")
        self.layer = nn.ModuleList([BertLayer(cfg, dropout, None if shapes is None else tuple(shapes[i]))
                                    for i in range(cfg.num_hidden_layers)])


def key_bias_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) float 1/0 mask -> (B, 1, 1, T) additive attention bias."""
    return ((1.0 - mask) * MASK_BIAS)[:, None, None, :]


def masked_mean_pool(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens (sentence-transformers' mean pooling, incl. [CLS]/[SEP])."""
    m = mask.unsqueeze(-1)
    return torch.sum(h * m, dim=1) / torch.clamp(torch.sum(m, dim=1), min=1e-9)


@final
class BertEncoder(nn.Module):
    """Embeddings + ``num_hidden_layers`` layers; parameter names match ``BertModel``
    (``embedding_rank`` > 0: the word table factorised, :class:`FactorisedEmbeddings`; ``shapes``:
    per-layer (heads, head_dim, ffn) of a pruned encoder, None = uniform ``cfg`` widths)."""

    def __init__(self, cfg: BertConfig, dropout: float = 0.1, embedding_rank: int = 0,
                 shapes: Optional[Sequence[Tuple[int, int, int]]] = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embeddings = FactorisedEmbeddings(cfg, embedding_rank) if embedding_rank else BertEmbeddings(cfg)
        self.encoder = _Layers(cfg, dropout, shapes)

    @property
    def layers(self) -> nn.ModuleList:
        return self.encoder.layer

    def mask(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids != self.cfg.pad_token_id).to(torch.float32)

    def run_layers(self, h: torch.Tensor, mask: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Layers ``start`` .. ``stop - 1`` on hidden states ``h`` (B, T, d)."""
        bias = key_bias_from_mask(mask)
        for layer in list(self.layers)[start:stop]:
            h = layer(h, bias)
        return h

    def forward(self, ids: torch.Tensor, stop: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(hidden states after layer ``stop - 1`` (all layers by default), mask)."""
        mask = self.mask(ids)
        return self.run_layers(self.embeddings(ids), mask, 0, stop), mask

    def load_bert_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a ``BertModel`` state dict (``bert.`` prefixes stripped; pooler and
        ``position_ids`` buffers ignored); fails on any missing or misshaped tensor."""
        clean: Dict[str, torch.Tensor] = {}
        for k, v in state.items():
            k = k[5:] if k.startswith("bert.") else k
            if k.startswith("pooler.") or k.endswith("position_ids") or k.startswith("cls."):
                continue
            clean[k] = v
        own = self.state_dict()
        missing = sorted(set(own) - set(clean))
        unexpected = sorted(set(clean) - set(own))
        if missing or unexpected:
            raise ValueError(f"BERT weights do not match the config: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        bad = [k for k in own if tuple(own[k].shape) != tuple(clean[k].shape)]
        if bad:
            raise ValueError(f"BERT weights have other shapes than the config for {bad[:5]}")
        self.load_state_dict(clean, strict=True)
