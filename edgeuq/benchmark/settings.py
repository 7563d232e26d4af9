"""Benchmark settings: architectures, training budgets, splits (one frozen dataclass)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Tuple

__all__ = ["BenchmarkSettings", "SCHEME_NAMES"]


def _variants(members: int = 3) -> Dict[str, Dict[str, Any]]:
    """Each compared variant as overrides of the task's model config: the scheme, its
    ``scheme_options`` and its stochastic sites. "laplace" is fitted post hoc on ensemble
    member 0 (a deterministic network; the members are cached and shared)."""
    return {
        "mc_dropout": {},
        "mc_dropout_attn": {"block_dropout_positions": ["attn_probs", "attn_out", "ffn_hidden", "ffn_out"]},
        "variational": {"scheme": "variational", "scheme_options": {"prior_sigma": 0.1}},
        "hsa": {"scheme": "hsa", "stochastic_head": False,
                "scheme_options": {"tau1": 1.0, "tau2": 1.0, "centroids": 16}},
        "ensemble": {"scheme": "ensemble", "stochastic_blocks": [], "scheme_options": {"members": members}},
        "laplace": {"scheme": "laplace", "stochastic_blocks": [], "stochastic_head": True,
                    "scheme_options": {"structure": "kron"}},
    }


#: Variants compared side by side (keys of ``BenchmarkSettings.variants``).
SCHEME_NAMES: Tuple[str, ...] = tuple(_variants())


def _bearing_model() -> Dict[str, Any]:
    return dict(patch=64, d_model=32, heads=4, depth=2, ffn=64, dropout=0.1, embed="conv", stem_channels=16,
                stochastic_blocks=(1,), stochastic_head=True)


def _text_model() -> Dict[str, Any]:
    return dict(patch=1, d_model=64, heads=4, depth=2, ffn=128, dropout=0.1, embed="token",
                stochastic_blocks=(1,), stochastic_head=True)


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything that decides the numbers; hashed into the model cache key."""

    # bearing (CWRU, 12 kHz drive end)
    window: int = 2048
    train_hop: int = 1024
    eval_hop: int = 2048
    cross_load_test: float = 3.0
    unseen_fault_size: float = 0.021
    snr_db: Tuple[float, ...] = (20.0, 10.0, 5.0, 0.0, -5.0)
    bearing_model: Dict[str, Any] = field(default_factory=_bearing_model)
    bearing_train: Dict[str, Any] = field(default_factory=lambda: dict(epochs=12, batch_size=64, lr=2e-3,
                                                                       weight_decay=1e-2, patience=4, seed=0))
    # text (SST-2 in domain, TREC out of distribution)
    text_length: int = 48
    text_min_freq: int = 2
    text_model: Dict[str, Any] = field(default_factory=_text_model)
    text_train: Dict[str, Any] = field(default_factory=lambda: dict(epochs=3, batch_size=128, lr=2e-3,
                                                                    weight_decay=1e-2, patience=2, seed=0))
    text_max_train: int = 40000      # random subset of the 60,614 training phrases (0: all), for CPU time
    text_schemes: Tuple[str, ...] = ("mc_dropout", "variational", "hsa", "ensemble", "laplace")
    # schemes: model-config overrides per variant (scheme, scheme_options, stochastic sites)
    variants: Dict[str, Dict[str, Any]] = field(default_factory=_variants)
    kl_weight: float = 1.0
    # evaluation
    samples: int = 32
    val_samples: int = 4
    latency_samples: Tuple[int, ...] = (1, 8, 32)
    latency_repeats: int = 30
    threads: int = 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def quick(cls) -> "BenchmarkSettings":
        """A smoke configuration (minutes, not for reporting)."""
        return cls(
            train_hop=2048, snr_db=(10.0, 0.0),
            bearing_model={**_bearing_model(), "d_model": 16, "ffn": 32, "stem_channels": 8, "heads": 2},
            bearing_train=dict(epochs=2, batch_size=64, lr=2e-3, weight_decay=1e-2, patience=2, seed=0),
            text_length=24, text_model={**_text_model(), "d_model": 16, "ffn": 32, "heads": 2},
            text_train=dict(epochs=1, batch_size=128, lr=2e-3, weight_decay=1e-2, patience=1, seed=0),
            text_max_train=3000, text_schemes=("mc_dropout", "ensemble", "laplace"), variants=_variants(members=2), samples=8, latency_samples=(1, 8), latency_repeats=5,
        )
