"""Deep ensemble of M deterministic transformers, exported as trunk + member-picking head.

``SignalTransformer(cfg)`` with ``cfg.scheme == "ensemble"`` builds an
:class:`EnsembleTransformer`: ``members`` holds M independently trained
deterministic networks (same architecture, ``members[m]`` has the usual module
names). Deployment split:

* trunk: every member once -> features = the members' logits, (B, M, C);
* head: one ``categorical`` noise input ``ensemble_member`` (one-hot over M)
  picks one member per sample: logits = sum_m onehot_m * features[:, m].

So S samples are S draws from the ensemble's uniform mixture (members picked
independently per sample; with S >= M not every member need appear). The
trunk always runs all M members, so latency hardly depends on S. The
deterministic pass (noise at its mean 1/M) averages the members' logits.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import torch
from torch import nn

from .config import ModelConfig
from .stochastic import NoiseDict, StochasticLayer
from .transformer import SignalTransformer

__all__ = ["EnsembleTransformer", "MemberSelector", "member_config"]


class MemberSelector(StochasticLayer):
    """One-hot member choice per row (``categorical`` noise); None -> uniform weights 1/M."""

    kind = "categorical"

    def __init__(self, name: str, members: int) -> None:
        super().__init__(name, (members,))
        self.members = members

    def noise_params(self):
        return {"k": self.members}

    def forward(self, features: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        w = self.noise_for(noise, features.shape[0], features)
        if w is None:
            return features.mean(dim=1)
        return torch.sum(features * w.unsqueeze(-1), dim=1)


def member_config(cfg: ModelConfig) -> ModelConfig:
    """The deterministic architecture of one member of an ensemble config."""
    return dataclasses.replace(cfg, scheme="mc_dropout", ensemble_members=1, stochastic_blocks=(),
                               stochastic_head=False, temperature=1.0)


class EnsembleTransformer(SignalTransformer):
    def __init__(self, cfg: ModelConfig) -> None:
        nn.Module.__init__(self)
        if cfg.scheme != "ensemble":
            raise ValueError(f"EnsembleTransformer needs scheme 'ensemble', got {cfg.scheme!r}")
        self.cfg = cfg
        self.members = nn.ModuleList(SignalTransformer(member_config(cfg)) for _ in range(cfg.ensemble_members))
        self.selector = MemberSelector("ensemble_member", cfg.ensemble_members)

    @classmethod
    def from_members(cls, cfg: ModelConfig, members: Sequence[SignalTransformer]) -> "EnsembleTransformer":
        """Assemble trained deterministic members (their weights are copied)."""
        if len(members) != cfg.ensemble_members:
            raise ValueError(f"config says {cfg.ensemble_members} members, got {len(members)}")
        ens = cls(cfg)
        for slot, member in zip(ens.members, members):
            slot.load_state_dict(member.state_dict())
        return ens.eval()

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], dim=1)

    def head_forward(self, features: torch.Tensor, noise: Optional[NoiseDict] = None) -> torch.Tensor:
        logits = self.selector(features, noise)
        if self.cfg.temperature != 1.0:
            logits = logits / self.cfg.temperature
        return logits

    def feature_shape(self) -> Tuple[int, ...]:
        return (self.cfg.ensemble_members, self.cfg.num_classes)
