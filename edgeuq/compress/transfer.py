"""Transfer set for distillation: training windows plus perturbed and
off-distribution windows, labelled by the teacher with S samples each.

The perturbations teach the student what the teacher does away from the
training distribution (where its epistemic uncertainty lives):

* ``noise``: additive white noise at an SNR drawn from ``snr_db`` (dB);
* ``pink_noise``: additive 1/f (pink) Gaussian noise at an SNR drawn from ``snr_db``
  (:mod:`edgeuq.data.augment`; not among the default kinds: the demo uses it instead of
  ``noise``, whose white family its noise-shift evaluation set uses);
* ``shift``: circular time shift by a random number of samples;
* ``clip``: amplitude scaling then saturation at ±``clip_level`` (a
  z-scored window is amplitude-invariant, a saturated sensor is not);
* ``mixup``: convex mix of two windows of (usually) different classes;
* ``synthetic``: sums of random sinusoids and impulse trains (no bearing physics);
* ``extra`` windows supplied by the caller (other loads, other rigs).

Every window is z-scored with the runtime's own
:func:`edgeuq_runtime.preprocess.zscore_windows`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Tuple

import numpy as np

from edgeuq_runtime.preprocess import zscore_windows

from ..artifact import Artifact, ArtifactWriter

__all__ = ["TransferConfig", "TransferSet", "augment_windows", "label_with_model", "label_with_runtime",
           "build_transfer_set", "save_transfer_set",
           "features_with_model", "features_with_runtime", "with_teacher_features", "load_transfer_set", "TransferSetArtifact", "AUGMENTATIONS",
           "KNOWN_AUGMENTATIONS"]

AUGMENTATIONS = ("noise", "shift", "clip", "mixup", "synthetic")
#: every kind ``TransferConfig.kinds`` may name (the defaults are ``AUGMENTATIONS``)
KNOWN_AUGMENTATIONS = AUGMENTATIONS + ("pink_noise",)


@dataclass(frozen=True)
class TransferConfig:
    """How many perturbed copies per training window, and of which kinds."""

    copies: int = 1
    kinds: Tuple[str, ...] = AUGMENTATIONS
    snr_db: Tuple[float, float] = (-6.0, 20.0)
    clip_level: Tuple[float, float] = (0.5, 2.0)
    synthetic_fraction: float = 0.1
    teacher_samples: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kinds", tuple(str(k) for k in self.kinds))
        bad = sorted(set(self.kinds) - set(KNOWN_AUGMENTATIONS))
        if bad:
            raise ValueError(f"unknown augmentation kinds {bad}; known: {list(KNOWN_AUGMENTATIONS)}")
        if self.copies < 0 or self.teacher_samples < 2:
            raise ValueError("copies must be >= 0 and teacher_samples >= 2 (uncertainty needs samples)")
        if not 0.0 <= self.synthetic_fraction <= 1.0:
            raise ValueError(f"synthetic_fraction must be in [0, 1], got {self.synthetic_fraction}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kinds"], d["snr_db"], d["clip_level"] = list(self.kinds), list(self.snr_db), list(self.clip_level)
        return d


def _noise(x: np.ndarray, rng: np.random.Generator, cfg: TransferConfig) -> np.ndarray:
    snr = rng.uniform(*cfg.snr_db, size=(len(x), 1))
    power = np.mean(x * x, axis=1, keepdims=True)
    return x + np.sqrt(power / 10.0 ** (snr / 10.0)) * rng.standard_normal(x.shape)


def _pink_noise(x: np.ndarray, rng: np.random.Generator, cfg: TransferConfig) -> np.ndarray:
    from ..data.augment import add_noise_at_snr

    return add_noise_at_snr(x, "pink", rng.uniform(*cfg.snr_db, size=(len(x), 1)), rng)


def _shift(x: np.ndarray, rng: np.random.Generator, cfg: TransferConfig) -> np.ndarray:
    shifts = rng.integers(1, x.shape[1], size=len(x))
    return np.stack([np.roll(w, int(s)) for w, s in zip(x, shifts)])


def _clip(x: np.ndarray, rng: np.random.Generator, cfg: TransferConfig) -> np.ndarray:
    level = rng.uniform(*cfg.clip_level, size=(len(x), 1))
    return np.clip(x, -level, level)


def _mixup(x: np.ndarray, rng: np.random.Generator, cfg: TransferConfig) -> np.ndarray:
    lam = rng.uniform(0.2, 0.8, size=(len(x), 1))
    return lam * x + (1.0 - lam) * x[rng.permutation(len(x))]


def _synthetic(n: int, length: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(length, dtype=np.float64)
    out = np.zeros((n, length))
    for i in range(n):
        for _ in range(int(rng.integers(1, 6))):
            out[i] += rng.uniform(0.2, 1.0) * np.sin(2 * np.pi * rng.uniform(0.001, 0.45) * t + rng.uniform(0, 6.3))
        period = int(rng.integers(16, max(17, length // 4)))
        out[i, int(rng.integers(0, period))::period] += rng.uniform(0.0, 5.0)
        out[i] += rng.uniform(0.0, 0.5) * rng.standard_normal(length)
    return out


_PERTURB: dict = {"noise": _noise, "pink_noise": _pink_noise, "shift": _shift, "clip": _clip, "mixup": _mixup}


def augment_windows(x: np.ndarray, cfg: TransferConfig, extra: Optional[np.ndarray] = None) -> np.ndarray:
    """``x`` followed by ``cfg.copies`` perturbed copies (one kind per window, cycling
    through ``cfg.kinds``), synthetic windows and ``extra``; all z-scored, float32."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"windows must have shape (N, L) with N > 0, got {x.shape}")
    rng = np.random.default_rng(cfg.seed)
    perturb = [k for k in cfg.kinds if k in _PERTURB]
    parts = [x]
    for _ in range(cfg.copies if perturb else 0):
        kind_of = rng.integers(0, len(perturb), size=len(x))
        out = np.empty_like(x)
        for k, name in enumerate(perturb):
            rows = np.flatnonzero(kind_of == k)
            if len(rows):
                out[rows] = _PERTURB[name](x[rows], rng, cfg)
        parts.append(out)
    if "synthetic" in cfg.kinds and cfg.synthetic_fraction > 0:
        parts.append(_synthetic(max(1, int(round(cfg.synthetic_fraction * len(x)))), x.shape[1], rng))
    if extra is not None and len(extra):
        parts.append(np.asarray(extra, dtype=np.float64))
    return zscore_windows(np.concatenate(parts).astype(np.float32))


@dataclass(frozen=True, eq=False)
class TransferSet:
    """Windows ``x`` (N, L), the teacher's sample probabilities ``probs`` (S, N, C) and, for
    feature distillation, the teacher's pooled trunk features ``features`` (N, d) (optional)."""

    x: np.ndarray
    probs: np.ndarray
    features: Optional[np.ndarray] = None

    def __post_init__(self) -> None:
        if self.probs.ndim != 3 or self.probs.shape[1] != len(self.x):
            raise ValueError(f"teacher probs must have shape (S, {len(self.x)}, C), got {self.probs.shape}")
        if self.features is not None:
            f = np.asarray(self.features)
            if f.ndim != 2 or f.shape[0] != len(self.x) or not np.isfinite(f).all():
                raise ValueError(f"teacher features must be finite with shape ({len(self.x)}, d), got {f.shape}")
            object.__setattr__(self, "features", np.ascontiguousarray(f, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.x)


@dataclass(frozen=True)
class TransferSetArtifact(Artifact):
    """A labelled transfer set on disk: ``transfer.npz`` (x, probs) + ``transfer.json``."""

    KIND: ClassVar[str] = "transfer_set"
    FORMAT_VERSION: ClassVar[int] = 1
    META_FILE: ClassVar[str] = "transfer.json"

    windows: int = 0
    teacher_samples: int = 0
    info: Mapping[str, Any] = field(default_factory=dict)

    def payload_files(self) -> Tuple[str, ...]:
        return ("transfer.npz",)

    def to_meta(self) -> dict:
        return {"windows": self.windows, "teacher_samples": self.teacher_samples, "info": dict(self.info)}

    @classmethod
    def from_meta(cls, meta, **base) -> "TransferSetArtifact":
        return cls(windows=int(meta["windows"]), teacher_samples=int(meta["teacher_samples"]),
                   info=dict(meta.get("info", {})), **base)

    def load_set(self) -> TransferSet:
        self.verify_files()
        with np.load(self.file_path("transfer.npz")) as z:
            return TransferSet(x=z["x"], probs=z["probs"], features=z["features"] if "features" in z.files else None)


def label_with_model(model, x: np.ndarray, samples: int, seed: int = 0, chunk: int = 256) -> np.ndarray:
    """Teacher = a PyTorch model: (S, N, C) sample probabilities (noise drawn with the runtime's samplers)."""
    import torch

    from ..models import mc_sample_probs

    rng = np.random.default_rng(seed)
    parts = [mc_sample_probs(model, torch.from_numpy(np.ascontiguousarray(x[i : i + chunk])), samples, rng=rng).numpy()
             for i in range(0, len(x), chunk)]
    return np.concatenate(parts, axis=1).astype(np.float32)


def label_with_runtime(bundle_dir: Path, x: np.ndarray, samples: int, seed: int = 0) -> np.ndarray:
    """Teacher = a bundle, run by the device runtime: (S, N, C) sample probabilities."""
    from edgeuq_runtime import UncertaintyRuntime

    from ..evaluate import run_runtime

    rt = UncertaintyRuntime(bundle_dir, seed=seed)
    return run_runtime(rt, x, samples, seed).samples.astype(np.float32)


def features_with_model(model, x: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Teacher = a PyTorch model: its pooled trunk features (N, d) (tokens averaged, as the
    runtime's density does), in eval mode (no sampling: the trunk is deterministic)."""
    import torch

    from ..models.eval_mode import evaluating

    parts = []
    with evaluating(model):
        for i in range(0, len(x), chunk):
            f = model.trunk(torch.from_numpy(np.ascontiguousarray(x[i : i + chunk])))
            parts.append((f.mean(1) if f.dim() == 3 else f).numpy())
    return np.concatenate(parts).astype(np.float32)


def features_with_runtime(bundle_dir: Path, x: np.ndarray) -> np.ndarray:
    """Teacher = a bundle: pooled trunk features (N, d) from the device runtime."""
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.density import pool_features

    rt = UncertaintyRuntime(bundle_dir, seed=0)
    return pool_features(rt.trunk_features(x)).astype(np.float32)


def with_teacher_features(ts: TransferSet, features: Callable[[np.ndarray], np.ndarray]) -> TransferSet:
    """``ts`` with the teacher's pooled trunk features of its windows (for feature distillation)."""
    return TransferSet(x=ts.x, probs=ts.probs, features=features(ts.x))


def build_transfer_set(x_train: np.ndarray, label: Callable[[np.ndarray, int, int], np.ndarray], cfg: TransferConfig,
                       extra: Optional[np.ndarray] = None) -> TransferSet:
    """Augment ``x_train`` and label every window with ``label(x, samples, seed)``."""
    x = augment_windows(x_train, cfg, extra)
    return TransferSet(x=x, probs=label(x, cfg.teacher_samples, cfg.seed))


def save_transfer_set(ts: TransferSet, directory: Path, info: Optional[Mapping[str, Any]] = None,
                      inputs: str = "") -> TransferSetArtifact:
    """Write the set as a hashed artifact (atomically) and return it, loaded back and verified."""
    with ArtifactWriter(directory) as w:
        extra = {} if ts.features is None else {"features": ts.features}
        np.savez_compressed(w.path / "transfer.npz", x=ts.x, probs=ts.probs, **extra)
        art = TransferSetArtifact(windows=len(ts), teacher_samples=int(ts.probs.shape[0]), info=dict(info or {}))
        if inputs:
            art = replace(art, inputs=inputs)
        return w.commit(art)


def load_transfer_set(directory: Path) -> TransferSet:
    return TransferSetArtifact.load(directory).load_set()
