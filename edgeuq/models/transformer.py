"""A small transformer encoder classifier for 1-D signal windows (or token ids).

(convolutional) patch embedding -> sinusoidal positions -> pre-norm encoder blocks -> LayerNorm
-> mean pool -> MLP head. The stochastic scheme (``ModelConfig.scheme``, a plug-in
from :mod:`edgeuq.schemes`) builds the layer at each site: the attention, the
linears and dropouts of each block, and the head's dropouts, linear and output
layer (see :class:`edgeuq.schemes.base.Scheme`); each block has its own widths
(``ModelConfig.block_shape``). With ``embed="token"`` the input is int64 token
ids (id 0 = padding, masked); when a block is stochastic the trunk appends the
padding mask to the token features as one extra channel, (T, d + 1), so the
head graph needs no extra input.

The model is split for deployment at the first stochastic layer:
``trunk(x)`` runs once per input, ``head(features, noise)`` runs S times.
:class:`DeployableModel` is that contract; a scheme may build its own model
class on it (the ensemble does). Build any model with :func:`build_model`.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, List, Optional, Tuple, final

import torch
from torch import nn

from edgeuq_runtime.noise import NoiseSpec

from .attention import MASK_BIAS, key_padding_bias
from .layers import NoiseDict, apply_layer, factorise_named, is_stochastic_layer
from .scheme_slot import SCHEMES

if TYPE_CHECKING:  # pragma: no cover
    from .config import ModelConfig

get_scheme = SCHEMES.get

__all__ = ["DeployableModel", "SignalTransformer", "build_model", "sinusoidal_positions", "masked_mean",
           "pool_tokens", "key_padding_bias", "MASK_BIAS"]


def sinusoidal_positions(tokens: int, dim: int) -> torch.Tensor:
    pos = torch.arange(tokens, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    pe = torch.zeros(tokens, dim)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return pe


@final
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


@final
class EncoderBlock(nn.Module):
    """Pre-norm block; the scheme builds each site, widths from ``cfg.block_shape(index)``."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        scheme = get_scheme(cfg.scheme)
        stochastic = index in cfg.stochastic_blocks
        t, d, ffn = cfg.block_tokens(index), cfg.d_model, cfg.block_shape(index).ffn
        self.norm1 = nn.LayerNorm(d)
        self.attn = scheme.attention(cfg, index, stochastic)
        self.drop_attn = scheme.block_dropout(cfg, index, "attn_out", (t, d), stochastic)
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = scheme.block_linear(cfg, index, "ffn_fc1", d, ffn, stochastic)
        self.act = nn.GELU()
        self.drop_hidden = scheme.block_dropout(cfg, index, "ffn_hidden", (t, ffn), stochastic)
        self.fc2 = scheme.block_linear(cfg, index, "ffn_fc2", ffn, d, stochastic)
        self.drop_ffn = scheme.block_dropout(cfg, index, "ffn_out", (t, d), stochastic)

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None,
                mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.drop_attn(self.attn(self.norm1(x), noise, mask), noise)
        h = self.drop_hidden(self.act(apply_layer(self.fc1, self.norm2(x), noise)), noise)
        return x + self.drop_ffn(apply_layer(self.fc2, h, noise), noise)


@final
class ClassifierHead(nn.Module):
    """LayerNorm'd pooled features -> dropout -> Linear -> GELU -> dropout -> output layer."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        scheme = get_scheme(cfg.scheme)
        d, w = cfg.d_model, cfg.head_width
        self.drop_in = scheme.head_dropout(cfg, "head_in", (d,))
        self.fc1 = scheme.head_linear(cfg, "fc1", d, w)
        self.act = nn.GELU()
        self.drop_hidden = scheme.head_dropout(cfg, "head_hidden", (w,))
        self.fc2 = scheme.head_output(cfg, w, cfg.num_classes)

    def forward(self, z: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        h = self.act(apply_layer(self.fc1, self.drop_in(z, noise), noise))
        return apply_layer(self.fc2, self.drop_hidden(h, noise), noise)


class DeployableModel(nn.Module, ABC):
    """The deployment contract: ``trunk`` once per input, ``head_forward`` S times with
    every noise input given; noise specs in registration order of the stochastic layers."""

    cfg: ModelConfig

    @abstractmethod
    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic prefix: inputs -> features at the split point."""

    @abstractmethod
    def head_forward(self, features: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        """Stochastic suffix: features -> logits; ``noise`` supplies every noise input."""

    @abstractmethod
    def feature_shape(self) -> Tuple[int, ...]:
        """Per-input shape of the trunk output."""

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        return self.head_forward(self.trunk(x), noise)

    def stochastic_layers(self) -> List[nn.Module]:
        """Stochastic layers in registration order (= noise input order)."""
        return [m for m in self.modules() if is_stochastic_layer(m)]

    def noise_specs(self) -> Tuple[NoiseSpec, ...]:
        return get_scheme(self.cfg.scheme).noise_specs(self)

    def set_sampling(self, on: bool) -> None:
        """Turn MC sampling of the stochastic layers on/off outside training."""
        for m in self.stochastic_layers():
            m.sampling = on


@final
class SignalTransformer(DeployableModel):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        get_scheme(cfg.scheme).check_model_class(type(self))
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
        elif self.cfg.stochastic_tokens:   # average neighbouring tokens: the stochastic blocks see fewer
            k = self.cfg.stochastic_tokens
            h = h.reshape(h.shape[0], k, self.cfg.tokens // k, h.shape[-1]).mean(dim=2)
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

    def feature_shape(self) -> Tuple[int, ...]:
        """Per-input shape of the trunk output."""
        if self.cfg.split_index == self.cfg.depth:
            return (self.cfg.d_model,)
        if self.cfg.embed == "token":
            return (self.cfg.tokens, self.cfg.d_model + 1)  # + the padding-mask channel
        return (self.cfg.block_tokens(self.cfg.split_index), self.cfg.d_model)


def build_model(cfg: ModelConfig) -> DeployableModel:
    """The model of ``cfg``, built by its scheme (e.g. an EnsembleTransformer for ``ensemble``), with the
    linear layers ``cfg.ranks`` names factorised (:class:`~edgeuq.models.layers.LowRankLinear`)."""
    model = get_scheme(cfg.scheme).build_model(cfg)
    return factorise_named(model, cfg.ranks) if cfg.ranks else model
