"""Training settings: ``[train]`` (:class:`TrainConfig`) and ``[uq]`` (:class:`UqConfig`) of a recipe."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Tuple, final

from ..settings import settings_from_dict

__all__ = ["TrainConfig", "UqConfig"]


@final
@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-2
    patience: int = 4
    seed: int = 0
    threads: int = 0  # 0: leave torch's default
    #: training-time noise augmentation (:mod:`edgeuq.data.augment`): "" = none, else a noise
    #: family ("pink") added to ``augment_fraction`` of each batch at an SNR uniform in ``augment_snr_db``
    augment_noise: str = ""
    augment_snr_db: Tuple[float, float] = (6.0, 20.0)
    augment_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError(f"epochs, batch_size and patience must be >= 1: {self}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        snr = tuple(self.augment_snr_db)
        if len(snr) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in snr) \
                or not snr[0] <= snr[1]:
            raise ValueError(f"[train] augment_snr_db must be [low, high] in dB with low <= high, got {self.augment_snr_db!r}")
        object.__setattr__(self, "augment_snr_db", (float(snr[0]), float(snr[1])))
        if not 0.0 <= self.augment_fraction <= 1.0:
            raise ValueError(f"[train] augment_fraction must be in [0, 1], got {self.augment_fraction!r}")
        if self.augment_noise:
            from ..data.augment import NOISE_FAMILIES

            if self.augment_noise not in NOISE_FAMILIES:
                raise ValueError(f"[train] augment_noise {self.augment_noise!r} is not a known noise family; known: "
                                 f"{sorted(NOISE_FAMILIES)} (or \"\" for none)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment_snr_db"] = list(self.augment_snr_db)
        return d

    def augmentation(self) -> str:
        """One line naming the augmentation ("none" without one), for reports."""
        if not self.augment_noise:
            return "none"
        lo, hi = self.augment_snr_db
        return (f"{self.augment_noise} noise added to {self.augment_fraction:.0%} of each training batch at "
                f"SNR {lo:g}-{hi:g} dB, then z-scored")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "TrainConfig":
        return settings_from_dict(cls, d, "training", **overrides)


@final
@dataclass(frozen=True)
class UqConfig:
    """A recipe's ``[uq]`` table, read strictly (an unknown key is an error naming it):

    * ``samples``: S of the bundle and of temperature scaling's validation predictive;
    * ``kl_weight``: weight of KL(q || p) / N_train in the variational ELBO;
    * ``val_samples``: samples of the validation predictive for early stopping (0: the
      deterministic pass);
    * ``temperature_scaling``: fit a temperature on the validation predictive;
    * ``laplace_samples``: draws of the Laplace prior-precision search.
    """

    samples: int = 16
    kl_weight: float = 1.0
    val_samples: int = 0
    temperature_scaling: bool = False
    laplace_samples: int = 64

    def __post_init__(self) -> None:
        for name in ("samples", "val_samples", "laplace_samples"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"[uq] {name} must be an integer >= 0, got {v!r}")
        if self.samples < 1 or self.laplace_samples < 1:
            raise ValueError(f"[uq] samples and laplace_samples must be >= 1: {self}")
        if isinstance(self.kl_weight, bool) or not isinstance(self.kl_weight, (int, float)) or not self.kl_weight >= 0:
            raise ValueError(f"[uq] kl_weight must be a number >= 0, got {self.kl_weight!r}")
        if not isinstance(self.temperature_scaling, bool):
            raise ValueError(f"[uq] temperature_scaling must be true or false, got {self.temperature_scaling!r}")
        object.__setattr__(self, "kl_weight", float(self.kl_weight))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **overrides: Any) -> "UqConfig":
        return settings_from_dict(cls, d, "[uq]", **overrides)
