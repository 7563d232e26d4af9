"""A small transformer encoder classifier for 1-D signal windows.

(convolutional) patch embedding -> sinusoidal positions -> pre-norm encoder blocks -> LayerNorm
-> mean pool -> MLP head. Blocks listed in ``ModelConfig.stochastic_blocks``
and (optionally) the head carry :class:`MCDropout` layers; other blocks use
ordinary dropout (training only).

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
    return nn.Conv1d(1, cfg.d_model, kernel_size=cfg.patch, stride=cfg.patch)


class SelfAttention(nn.Module):
    """Multi-head self-attention written with plain ops (exports to MatMul/Softmax)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.softmax((q @ k.transpose(-2, -1)) * (self.head_dim ** -0.5), dim=-1)
        out = (att @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(out)


class EncoderBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        stochastic = index in cfg.stochastic_blocks
        t, d = cfg.tokens, cfg.d_model
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.heads)
        self.drop_attn = _dropout(stochastic, f"block{index}_attn_out", cfg.dropout, (t, d))
        self.norm2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.ffn)
        self.act = nn.GELU()
        self.drop_hidden = _dropout(stochastic, f"block{index}_ffn_hidden", cfg.dropout, (t, cfg.ffn))
        self.fc2 = nn.Linear(cfg.ffn, d)
        self.drop_ffn = _dropout(stochastic, f"block{index}_ffn_out", cfg.dropout, (t, d))

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        x = x + self.drop_attn(self.attn(self.norm1(x)), noise)
        h = self.drop_hidden(self.act(self.fc1(self.norm2(x))), noise)
        return x + self.drop_ffn(self.fc2(h), noise)


class ClassifierHead(nn.Module):
    """LayerNorm'd pooled features -> dropout -> Linear -> GELU -> dropout -> Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.drop_in = _dropout(cfg.stochastic_head, "head_in", cfg.dropout, (d,))
        self.fc1 = nn.Linear(d, d)
        self.act = nn.GELU()
        self.drop_hidden = _dropout(cfg.stochastic_head, "head_hidden", cfg.dropout, (d,))
        self.fc2 = nn.Linear(d, cfg.num_classes)

    def forward(self, z: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        h = self.act(self.fc1(self.drop_in(z, noise)))
        return self.fc2(self.drop_hidden(h, noise))


class SignalTransformer(nn.Module):
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
        """Deterministic prefix: (B, L) windows -> features at the split point."""
        h = self.embed(x.unsqueeze(1)).transpose(1, 2) + self.positions
        for block in self.blocks[: self.cfg.split_index]:
            h = block(h)
        if self.cfg.split_index == self.cfg.depth:
            h = self.norm(h).mean(dim=1)
        return h

    def head_forward(self, features: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        """Stochastic suffix: features -> logits; ``noise`` supplies every mask."""
        h = features
        if self.cfg.split_index < self.cfg.depth:
            for block in self.blocks[self.cfg.split_index :]:
                h = block(h, noise)
            h = self.norm(h).mean(dim=1)
        return self.head(h, noise)

    def forward(self, x: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        return self.head_forward(self.trunk(x), noise)

    # -- stochastic layers ------------------------------------------------
    def stochastic_layers(self) -> List[MCDropout]:
        return [m for m in self.modules() if isinstance(m, MCDropout)]

    def noise_specs(self) -> Tuple[NoiseSpec, ...]:
        return tuple(m.noise_spec() for m in self.stochastic_layers())

    def feature_shape(self) -> Tuple[int, ...]:
        """Per-input shape of the trunk output."""
        if self.cfg.split_index == self.cfg.depth:
            return (self.cfg.d_model,)
        return (self.cfg.tokens, self.cfg.d_model)

    def set_sampling(self, on: bool) -> None:
        """Turn MC sampling of the stochastic layers on/off outside training."""
        for m in self.stochastic_layers():
            m.sampling = on
