"""Noise specifications and samplers: the contract between export and runtime.

A stochastic graph never draws random numbers itself (TVM has no random ops and
imports ONNX Dropout as identity). Every random tensor is a graph input described
by a :class:`NoiseSpec`; the runtime draws it from a seeded numpy generator.

Kinds
-----
``dropout_mask``
    Inverted-dropout keep mask: each element is ``0`` with probability ``p`` and
    ``1/(1-p)`` otherwise, so that ``E[mask] = 1``. Params: ``p`` in ``[0, 1)``.
``standard_normal``
    i.i.d. N(0, 1) noise (reparameterised Gaussian layers). No params.
``uniform``
    i.i.d. U(0, 1) noise (e.g. Gumbel-softmax layers turn it into Gumbel noise
    inside the graph). No params.
``categorical``
    One-hot draws of a uniform categorical over the last axis: every row of
    ``shape[-1] = k`` entries is ``1`` at one index drawn uniformly from
    ``0..k-1`` and ``0`` elsewhere. Params: ``k`` (an integer >= 2, equal to
    ``shape[-1]``). Used by deep ensembles: each sample picks one member, so S
    samples are S draws from the ensemble's uniform mixture. Its mean ``1/k``
    averages the members' logits (the deterministic pass).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Sequence, Tuple

import numpy as np

from .errors import ManifestError

__all__ = ["NoiseSpec", "NOISE_SAMPLERS", "NOISE_MEANS", "sample_noise", "mean_noise", "noise_specs_from_json"]


@dataclass(frozen=True)
class NoiseSpec:
    """One random graph input: per-sample ``shape`` (batch axis excluded)."""

    name: str
    kind: str
    shape: Tuple[int, ...]
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ManifestError(f"noise input needs a non-empty name, got {self.name!r}")
        if self.kind not in NOISE_SAMPLERS:
            raise ManifestError(
                f"noise input {self.name!r}: unknown kind {self.kind!r}; "
                f"known kinds: {sorted(NOISE_SAMPLERS)}"
            )
        shape = tuple(int(d) for d in self.shape)
        if any(d <= 0 for d in shape):
            raise ManifestError(f"noise input {self.name!r}: shape {shape} has a non-positive axis")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "params", dict(self.params))
        if self.kind == "dropout_mask":
            p = self.params.get("p")
            if p is None or not (0.0 <= float(p) < 1.0):
                raise ManifestError(f"noise input {self.name!r}: dropout_mask needs 0 <= p < 1, got {p!r}")
        if self.kind == "categorical":
            k = self.params.get("k")
            if isinstance(k, bool) or not isinstance(k, (int, float)) or int(k) != k or k < 2:
                raise ManifestError(f"noise input {self.name!r}: categorical needs an integer k >= 2, got {k!r}")
            if not shape or shape[-1] != int(k):
                raise ManifestError(f"noise input {self.name!r}: categorical shape {shape} must end with k = {int(k)}")

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "params": dict(self.params)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "NoiseSpec":
        try:
            return cls(name=obj["name"], kind=obj["kind"], shape=tuple(obj["shape"]), params=obj.get("params", {}))
        except (KeyError, TypeError) as exc:
            raise ManifestError(f"malformed noise entry {obj!r}: {exc}") from exc


def _dropout_mask(rng: np.random.Generator, shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    p = float(params["p"])
    keep = rng.random(shape, dtype=np.float32) >= p
    return keep.astype(np.float32) * np.float32(1.0 / (1.0 - p))


def _standard_normal(rng: np.random.Generator, shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _uniform(rng: np.random.Generator, shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    return rng.random(shape, dtype=np.float32)


def _categorical(rng: np.random.Generator, shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    k = int(params["k"])
    index = rng.integers(0, k, size=shape[:-1])
    return np.eye(k, dtype=np.float32)[index]


NOISE_SAMPLERS: Dict[str, Callable[[np.random.Generator, Tuple[int, ...], Mapping[str, float]], np.ndarray]] = {
    "dropout_mask": _dropout_mask,
    "standard_normal": _standard_normal,
    "uniform": _uniform,
    "categorical": _categorical,
}


def _ones(shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    return np.ones(shape, dtype=np.float32)


def _zeros(shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    return np.zeros(shape, dtype=np.float32)


def _halves(shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    return np.full(shape, 0.5, dtype=np.float32)


def _uniform_categorical(shape: Tuple[int, ...], params: Mapping[str, float]) -> np.ndarray:
    return np.full(shape, 1.0 / int(params["k"]), dtype=np.float32)


#: The expectation of each kind, used for deterministic (noise-free) inference:
#: an inverted-dropout mask has mean 1, N(0, 1) has mean 0, U(0, 1) has mean 0.5,
#: a one-hot uniform categorical over k has mean 1/k.
#: Every kind in NOISE_SAMPLERS must have an entry here.
NOISE_MEANS: Dict[str, Callable[[Tuple[int, ...], Mapping[str, float]], np.ndarray]] = {
    "dropout_mask": _ones,
    "standard_normal": _zeros,
    "uniform": _halves,
    "categorical": _uniform_categorical,
}


def sample_noise(specs: Sequence[NoiseSpec], n: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Draw every noise input for ``n`` stacked samples: arrays of shape ``(n, *spec.shape)``."""
    if n <= 0:
        raise ValueError(f"number of noise draws must be positive, got {n}")
    return {s.name: NOISE_SAMPLERS[s.kind](rng, (n,) + s.shape, s.params) for s in specs}


def mean_noise(specs: Sequence[NoiseSpec], n: int) -> Dict[str, np.ndarray]:
    """Every noise input at its mean (see NOISE_MEANS), shape ``(n, *spec.shape)``."""
    if n <= 0:
        raise ValueError(f"number of noise rows must be positive, got {n}")
    return {s.name: NOISE_MEANS[s.kind]((n,) + s.shape, s.params) for s in specs}


def noise_specs_from_json(items: Sequence[Mapping[str, Any]]) -> Tuple[NoiseSpec, ...]:
    specs = tuple(NoiseSpec.from_json(o) for o in items)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ManifestError(f"duplicate noise input names: {names}")
    return specs
