"""Settings shared by every Fisher estimator."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional

from ..settings import settings_from_dict
from .per_sample import DEFAULT_PER_SAMPLE, PER_SAMPLE_GRADIENTS

__all__ = ["FisherConfig", "LABEL_MODES", "EXACT_MAX_CLASSES", "RENAMED_KEYS"]

LABEL_MODES = ("true", "empirical")
#: old key -> its new name (an old key is refused naming the new one)
RENAMED_KEYS = {"backend": "per_sample"}
#: With at most this many classes the true Fisher sums over classes instead of sampling (see exact_expectation).
EXACT_MAX_CLASSES = 16


@dataclass(frozen=True)
class FisherConfig:
    """How a Fisher estimate is taken over a calibration set.

    labels
        ``"true"`` (default): labels drawn from the model's own predictive
        p(y | x, θ) — the Fisher information. ``"empirical"``: the data labels —
        the "empirical Fisher", which is *not* the Fisher (Kunstner et al. 2019)
        and differs from it wherever the model does not fit the labels.
    label_samples
        True Fisher only, when sampling: labels drawn per input (and per noise sample).
    exact_expectation
        True Fisher only: instead of sampling labels, sum over every class
        weighted by its probability — the exact expectation over y ~ p(y|x),
        one backward pass per class. ``None`` (default): exact when the model
        has at most ``EXACT_MAX_CLASSES`` classes, sampled otherwise. Sampling
        is unbiased but, for a confident model (p(ŷ|x) = 1 − ε), almost never
        draws the other classes whose terms (≈ ε each, against ≈ ε² for ŷ)
        make up nearly all of the Fisher: with few labels drawn the estimate
        collapses onto the empirical Fisher.
    noise_samples
        Stochastic models (MC dropout): noise realisations per input; the
        estimate is the average over them, E_ε[F(θ; ε)]. Deterministic models
        use one pass whatever this says.
    batch_size, seed
        Streaming batch size; seed of the label and noise generators (noise is
        drawn per batch with the runtime's samplers from
        ``numpy.random.default_rng(seed)`` in the diagonal pass, ``seed + 1`` in
        the activation/structure/K-FAC pass, ``seed + 2`` for Hessian traces).
    per_sample
        How per-sample parameter gradients are taken: the name of a registered
        estimator (:mod:`edgeuq.fisher.per_sample`): ``vmap`` = torch.func
        vmap(grad) (default), ``loop`` = one backward per sample. (Formerly
        ``backend``; "backend" now means only the runtime executor.)
    """

    labels: str = "true"
    label_samples: int = 1
    exact_expectation: Optional[bool] = None
    noise_samples: int = 4
    batch_size: int = 32
    seed: int = 0
    per_sample: str = DEFAULT_PER_SAMPLE
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.labels not in LABEL_MODES:
            problems.append(f"labels must be one of {LABEL_MODES}, got {self.labels!r}")
        if self.per_sample not in PER_SAMPLE_GRADIENTS:
            problems.append(f"per_sample must be one of {list(PER_SAMPLE_GRADIENTS.names())}, got {self.per_sample!r}")
        for name in ("label_samples", "noise_samples", "batch_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid FisherConfig: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FisherConfig":
        """Strict: an unknown key is refused, and a renamed one names its new key."""
        renamed = [f"{old!r} is now {new!r}" for old, new in RENAMED_KEYS.items() if old in d]
        if renamed:
            raise ValueError(f"fisher settings: {'; '.join(renamed)} (per-sample gradient estimator: "
                             f"{' | '.join(PER_SAMPLE_GRADIENTS.names())})")
        return settings_from_dict(cls, d, "fisher")
