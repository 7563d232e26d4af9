"""Deep ensemble of M deterministic transformers, exported as trunk + member-picking head.

``build_model(cfg)`` with scheme ``ensemble`` builds an :class:`EnsembleTransformer`:
``members`` holds M independently trained deterministic networks (same
architecture, ``members[m]`` has the usual module names). Deployment split:

* trunk: every member once -> features = the members' logits, (B, M, C);
* head: one ``categorical`` noise input ``ensemble_member`` (one-hot over M)
  picks one member per sample: logits = sum_m onehot_m * features[:, m].

So S samples are S draws from the ensemble's uniform mixture (members picked
independently per sample; with S >= M not every member need appear). The
trunk always runs all M members, so latency hardly depends on S. The
deterministic pass (noise at its mean 1/M) averages the members' logits.
Training: M deterministic networks, seeds ``seed + m`` (:meth:`EnsembleScheme.train`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Optional, Sequence, Tuple, final

import torch
from torch import nn

from ..models.layers import NoiseDict, StochasticLayer
from ..models.transformer import DeployableModel, SignalTransformer
from .base import FitContext, FitResult, Scheme, deterministic_config
from .registry import register_scheme

__all__ = ["EnsembleTransformer", "MemberSelector", "member_config", "EnsembleOptions", "EnsembleScheme"]

#: The deterministic architecture of one member of an ensemble config.
member_config = deterministic_config


@final
@dataclass(frozen=True)
class EnsembleOptions:
    """Number of ``members`` (>= 2)."""

    members: int = 3


@final
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


@final
class EnsembleTransformer(DeployableModel):
    def __init__(self, cfg: Any) -> None:
        super().__init__()
        if not isinstance(cfg.scheme_options, EnsembleOptions):
            raise ValueError(f"EnsembleTransformer needs scheme 'ensemble', got {cfg.scheme!r}")
        members = cfg.scheme_options.members
        self.cfg = cfg
        self.members = nn.ModuleList(SignalTransformer(member_config(cfg)) for _ in range(members))
        self.selector = MemberSelector("ensemble_member", members)

    @classmethod
    def from_members(cls, cfg: Any, members: Sequence[nn.Module]) -> "EnsembleTransformer":
        """Assemble trained deterministic members (their weights are copied)."""
        if len(members) != cfg.scheme_options.members:
            raise ValueError(f"config says {cfg.scheme_options.members} members, got {len(members)}")
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
        return (self.cfg.scheme_options.members, self.cfg.num_classes)


@final
@register_scheme("ensemble")
class EnsembleScheme(Scheme):
    trunk_layers = True
    options_type = EnsembleOptions
    def problems(self, cfg: Any) -> List[str]:
        problems = []
        if cfg.scheme_options.members < 2:
            problems.append(f"scheme 'ensemble' needs scheme_options members >= 2, got {cfg.scheme_options.members}")
        if cfg.stochastic_blocks:
            problems.append("scheme 'ensemble' has deterministic members: set stochastic_blocks = []")
        return problems

    def check_model_class(self, cls: type) -> None:
        raise ValueError(f"scheme 'ensemble' builds an EnsembleTransformer, not a {cls.__name__}; "
                         "use edgeuq.models.build_model(cfg)")

    def build_model(self, cfg: Any) -> nn.Module:
        return EnsembleTransformer(cfg)

    def train(self, cfg: Any, ctx: FitContext) -> FitResult:
        """``members`` deterministic networks (``ctx.deterministic_member``: seed ``seed + m``,
        different initialisation and batch order), assembled."""
        torch.manual_seed(ctx.train_cfg.seed)
        members, runs = [], []
        m_cfg = member_config(cfg)
        for m in range(cfg.scheme_options.members):
            ctx.log(f"ensemble member {m + 1}/{cfg.scheme_options.members}")
            member, res = ctx.deterministic_member(m_cfg, m)
            members.append(member)
            if res is not None:
                runs.append(res)
        model = EnsembleTransformer.from_members(cfg, members)
        return FitResult(model, {"members": [r.to_dict() for r in runs]}, tuple(runs))
