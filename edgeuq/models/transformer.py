"""A small transformer encoder classifier for 1-D signal windows.

(convolutional) patch embedding -> sinusoidal positions -> pre-norm encoder blocks -> LayerNorm
-> mean pool -> MLP head. Blocks listed in ``ModelConfig.stochastic_blocks``
and (optionally) the head carry :class:`MCDropout` layers; other blocks use
ordinary dropout (training only).

Other schemes (``ModelConfig.scheme``) swap in their own layer modules at the
same places: :class:`~edgeuq.models.variational.BayesLinear` for the linears,
:class:`~edgeuq.models.hsa.HierarchicalStochasticAttention` for the attention,
:class:`~edgeuq.models.laplace.LastLayerLaplace` for ``head.fc2``; ``ensemble``
builds an :class:`~edgeuq.models.ensemble.EnsembleTransformer`. With
``embed="token"`` the input is int64 token ids (id 0 = padding, masked); when a
block is stochastic the trunk appends the padding mask to the token features as
one extra channel, (T, d + 1), so the head graph needs no extra input.

The model is split for deployment at the first stochastic layer:
``trunk(x)`` runs once per input, ``head(features, noise)`` runs S times.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
from torch import nn

from edgeuq_runtime.noise import NoiseSpec

from .config import ModelConfig
from .mc_dropout import MCDropout, NoiseDict
from .stochastic import apply_layer, is_stochastic_layer

__all__ = ["SignalTransformer", "sinusoidal_positions"]


def sinusoidal_positions(tokens: int, dim: int) -> torch.Tensor:
    pos = torch.arange(tokens, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(tokens, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


class _Drop(nn.Module):
    """Ordinary dropout with the MCDropout call signature (deterministic blocks)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.drop = nn.Dropout(p)

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        return self.drop(x)


def _dropout(stochastic: bool, name: str, p: float, shape: Tuple[int, ...]) -> nn.Module:
    return MCDropout(name, p, shape) if stochastic else _Drop(p)


class ConvPatchEmbed(nn.Module):
    """Convolutional patch embedding: three strided convolutions (stride 4, 2,
    patch/8) turn each ``patch`` samples into one token. The first layer's wide
    kernel can learn a band-pass around structural resonances and the GELU a
    rectifier, i.e. an envelope detector, which raw linear patches lack."""

    def __init__(self, patch: int, channels: int, dim: int) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(1, channels, kernel_size=32, stride=4, padding=14)
        self.c2 = nn.Conv1d(channels, channels, kernel_size=5, stride=2, padding=2)
        self.c3 = nn.Conv1d(channels, dim, kernel_size=patch // 8, stride=patch // 8)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(self.act(self.c2(self.act(self.c1(x)))))


def _embedding(cfg: ModelConfig) -> nn.Module:
    if cfg.embed == "conv":
        return ConvPatchEmbed(cfg.patch, cfg.stem_channels, cfg.d_model)
    if cfg.embed == "token":
        return nn.Embedding(cfg.vocab_size, cfg.d_model)
    return nn.Conv1d(1, cfg.d_model, kernel_size=cfg.patch, stride=cfg.patch)


#: Added to the attention scores of padded keys (large, but finite for low-precision backends).
MASK_BIAS = -1e4


def key_padding_bias(mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """(B, T) 1/0 token mask -> (B, 1, 1, T) additive attention bias (None stays None)."""
    return None if mask is None else ((1.0 - mask) * MASK_BIAS)[:, None, None, :]


def masked_mean(h: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean over tokens (axis 1), counting only unmasked tokens when a mask is given."""
    if mask is None:
        return h.mean(dim=1)
    m = mask.unsqueeze(-1)
    return torch.sum(h * m, dim=1) / torch.clamp(torch.sum(m, dim=1), min=1.0)


def pool_tokens(h: torch.Tensor, mask: Optional[torch.Tensor], how: str) -> torch.Tensor:
    """``mean`` (:func:`masked_mean`) or ``max`` over tokens (padded tokens excluded)."""
    if how == "mean":
        return masked_mean(h, mask)
    if mask is not None:
        h = h + ((1.0 - mask) * MASK_BIAS).unsqueeze(-1)
    return torch.amax(h, dim=1)


class SelfAttention(nn.Module):
    """Multi-head self-attention written with plain ops (exports to MatMul/Softmax).

    ``qkv``/``proj`` may be given (e.g. BayesLinear); ``drop_probs`` (MC dropout on
    the attention weights) exists only when given.
    """

    def __init__(self, dim: int, heads: int, qkv: Optional[nn.Module] = None, proj: Optional[nn.Module] = None,
                 drop_probs: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = qkv if qkv is not None else nn.Linear(dim, 3 * dim)
        self.proj = proj if proj is not None else nn.Linear(dim, dim)
        if drop_probs is not None:
            self.drop_probs = drop_probs

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, noise: Optional[NoiseDict],
                  key_bias: Optional[torch.Tensor]) -> torch.Tensor:
        scores = (q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5)
        if key_bias is not None:
            scores = scores + key_bias
        att = torch.softmax(scores, dim=-1)
        if hasattr(self, "drop_probs"):
            att = self.drop_probs(att, noise)
        return att @ v

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, t, d = x.shape
        qkv = apply_layer(self.qkv, x, noise).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        out = self.attention(q, k, v, noise, key_padding_bias(mask)).transpose(1, 2).reshape(b, t, d)
        return apply_layer(self.proj, out, noise)


def _linear(cfg: ModelConfig, bayes: bool, name: str, n_in: int, n_out: int, shape: Tuple[int, ...]) -> nn.Module:
    if not bayes:
        return nn.Linear(n_in, n_out)
    from .variational import BayesLinear

    return BayesLinear(name, n_in, n_out, shape, cfg.vi_prior_sigma, cfg.vi_init_sigma)


def _attention(cfg: ModelConfig, index: int, stochastic: bool) -> nn.Module:
    t, d = cfg.tokens, cfg.d_model
    if stochastic and cfg.scheme == "hsa":
        from .hsa import HierarchicalStochasticAttention

        return HierarchicalStochasticAttention(d, cfg.heads, t, cfg.hsa_centroids, cfg.hsa_tau1, cfg.hsa_tau2,
                                               f"block{index}")
    bayes = stochastic and cfg.scheme == "variational" and "attn" in cfg.bayes_positions
    qkv = _linear(cfg, bayes, f"block{index}_attn_qkv", d, 3 * d, (t, 3 * d)) if bayes else None
    proj = _linear(cfg, bayes, f"block{index}_attn_proj", d, d, (t, d)) if bayes else None
    probs = None
    if stochastic and cfg.scheme == "mc_dropout" and "attn_probs" in cfg.block_dropout_positions:
        probs = MCDropout(f"block{index}_attn_probs", cfg.dropout, (cfg.heads, t, t))
    return SelfAttention(d, cfg.heads, qkv=qkv, proj=proj, drop_probs=probs)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        stochastic = index in cfg.stochastic_blocks
        mc = stochastic and cfg.scheme == "mc_dropout"
        bayes_ffn = stochastic and cfg.scheme == "variational" and "ffn" in cfg.bayes_positions
        pos = cfg.block_dropout_positions
        t, d = cfg.tokens, cfg.d_model
        self.norm1 = nn.LayerNorm(d)
        self.attn = _attention(cfg, index, stochastic)
        self.drop_attn = _dropout(mc and "attn_out" in pos, f"block{index}_attn_out", cfg.dropout, (t, d))
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = _linear(cfg, bayes_ffn, f"block{index}_ffn_fc1", d, cfg.ffn, (t, cfg.ffn))
        self.act = nn.GELU()
        self.drop_hidden = _dropout(mc and "ffn_hidden" in pos, f"block{index}_ffn_hidden", cfg.dropout, (t, cfg.ffn))
        self.fc2 = _linear(cfg, bayes_ffn, f"block{index}_ffn_fc2", cfg.ffn, d, (t, d))
        self.drop_ffn = _dropout(mc and "ffn_out" in pos, f"block{index}_ffn_out", cfg.dropout, (t, d))

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_attn(self.attn(self.norm1(x), noise, mask), noise)
        h = self.drop_hidden(self.act(apply_layer(self.fc1, self.norm2(x), noise)), noise)
        return x + self.drop_ffn(apply_layer(self.fc2, h, noise), noise)


class ClassifierHead(nn.Module):
    """LayerNorm'd pooled features -> dropout -> Linear -> GELU -> dropout -> Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        mc = cfg.stochastic_head and cfg.scheme in ("mc_dropout", "hsa")
        bayes = cfg.stochastic_head and cfg.scheme == "variational"
        pos = cfg.head_dropout_positions
        self.drop_in = _dropout(mc and "head_in" in pos, "head_in", cfg.dropout, (d,))
        self.fc1 = _linear(cfg, bayes, "head_fc1", d, d, (d,))
        self.act = nn.GELU()
        self.drop_hidden = _dropout(mc and "head_hidden" in pos, "head_hidden", cfg.dropout, (d,))
        if cfg.scheme == "laplace":
            from .laplace import LastLayerLaplace

            self.fc2: nn.Module = LastLayerLaplace("head_laplace", d, cfg.num_classes, cfg.laplace_structure)
        else:
            self.fc2 = _linear(cfg, bayes, "head_fc2", d, cfg.num_classes, (cfg.num_classes,))

    def forward(self, z: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        h = self.act(apply_layer(self.fc1, self.drop_in(z, noise), noise))
        return apply_layer(self.fc2, self.drop_hidden(h, noise), noise)


class SignalTransformer(nn.Module):
    def __new__(cls, *args, **kwargs):
        # scheme "ensemble" builds an EnsembleTransformer (a subclass), so that
        # SignalTransformer(cfg) -- e.g. in Checkpoint.load_model -- covers every scheme.
        cfg = args[0] if args else kwargs.get("cfg")
        if cls is SignalTransformer and getattr(cfg, "scheme", None) == "ensemble":
            from .ensemble import EnsembleTransformer

            cls = EnsembleTransformer
        return super().__new__(cls)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = _embedding(cfg)
        self.register_buffer("positions", sinusoidal_positions(cfg.tokens, cfg.d_model), persistent=False)
        self.blocks = nn.ModuleList(EncoderBlock(cfg, i) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.d_model)
        self.head = ClassifierHead(cfg)

    # -- deployment split -------------------------------------------------
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic prefix: (B, L) windows (or int64 token ids) -> features at the split point."""
        if self.cfg.embed == "token":
            return self._token_trunk(x)
        h = self.embed(x.unsqueeze(1)).transpose(1, 2) + self.positions
        for block in self.blocks[: self.cfg.split_index]:
            h = block(h)
        if self.cfg.split_index == self.cfg.depth:
            h = pool_tokens(self.norm(h), None, self.cfg.pool)
        return h

    def _token_trunk(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != 0).to(torch.float32)
        h = self.embed(ids) + self.positions
        for block in self.blocks[: self.cfg.split_index]:
            h = block(h, None, mask)
        if self.cfg.split_index == self.cfg.depth:
            return pool_tokens(self.norm(h), mask, self.cfg.pool)
        return torch.cat([h, mask.unsqueeze(-1)], dim=-1)

    def head_forward(self, features: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        """Stochastic suffix: features -> logits; ``noise`` supplies every mask."""
        h = features
        if self.cfg.split_index < self.cfg.depth:
            mask = None
            if self.cfg.embed == "token":
                h, mask = features[..., :-1], features[..., -1]
            for block in self.blocks[self.cfg.split_index :]:
                h = block(h, noise) if mask is None else block(h, noise, mask)
            h = pool_tokens(self.norm(h), mask, self.cfg.pool)
        logits = self.head(h, noise)
        if self.cfg.temperature != 1.0:
            logits = logits / self.cfg.temperature
        return logits

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        return self.head_forward(self.trunk(x), noise)

    # -- stochastic layers ------------------------------------------------
    def stochastic_layers(self) -> List[nn.Module]:
        """MCDropout and StochasticLayer modules, in registration order (= noise input order)."""
        return [m for m in self.modules() if is_stochastic_layer(m)]

    def noise_specs(self) -> Tuple[NoiseSpec, ...]:
        return tuple(m.noise_spec() for m in self.stochastic_layers())

    def feature_shape(self) -> Tuple[int, ...]:
        """Per-input shape of the trunk output."""
        if self.cfg.split_index == self.cfg.depth:
            return (self.cfg.d_model,)
        if self.cfg.embed == "token":
            return (self.cfg.tokens, self.cfg.d_model + 1)  # + the padding-mask channel
        return (self.cfg.tokens, self.cfg.d_model)

    def set_sampling(self, on: bool) -> None:
        """Turn MC sampling of the stochastic layers on/off outside training."""
        for m in self.stochastic_layers():
            m.sampling = on
