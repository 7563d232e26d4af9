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

import functools
import math
import sys
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .errors import ManifestError

__all__ = ["NoiseSpec", "NOISE_SAMPLERS", "NOISE_MEANS", "sample_noise", "mean_noise", "noise_specs_from_json",
           "sample_noise_for_sample", "sample_noise_samples", "sample_noise_tiled", "sample_noise_rows",
           "noise_writer", "row_layout", "words_per_row", "dropout_threshold", "normal_table", "prepare_noise",
           "DROPOUT_8BIT_REL_TOL", "MAX_NOISE_ELEMENTS", "NOISE_STREAM"]

#: Bounds on one noise input: elements per row and axes (a manifest asking for more is refused).
MAX_NOISE_ELEMENTS = 1 << 24
MAX_NOISE_RANK = 8
_PARAMS = {"dropout_mask": {"p"}, "standard_normal": set(), "uniform": set(), "categorical": {"k"}}


@dataclass(frozen=True)
class NoiseSpec:
    """One random graph input: per-sample ``shape`` (batch axis excluded)."""

    name: str
    kind: str
    shape: Tuple[int, ...]
    params: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ManifestError(f"noise input needs a non-empty name, got {self.name!r}")
        where = f"noise {self.name!r}"
        if not isinstance(self.kind, str) or self.kind not in NOISE_SAMPLERS:
            raise ManifestError(
                f"{where}.kind: unknown kind {self.kind!r}; "
                f"known kinds: {sorted(NOISE_SAMPLERS)}"
            )
        if isinstance(self.shape, (str, bytes)) or not isinstance(self.shape, (list, tuple)):
            raise ManifestError(f"{where}.shape: must be a list of integers, got {self.shape!r}")
        if len(self.shape) > MAX_NOISE_RANK:
            raise ManifestError(f"{where}.shape: at most {MAX_NOISE_RANK} axes, got {len(self.shape)}")
        for d in self.shape:
            if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
                raise ManifestError(f"{where}.shape: every axis must be an integer, got {d!r} in {list(self.shape)!r}")
            if not 1 <= d <= MAX_NOISE_ELEMENTS:
                raise ManifestError(f"{where}.shape: shape {list(self.shape)} has an axis outside "
                                    f"[1, {MAX_NOISE_ELEMENTS}]")
        shape = tuple(int(d) for d in self.shape)
        if int(np.prod(shape, dtype=object)) > MAX_NOISE_ELEMENTS:
            raise ManifestError(f"{where}.shape: {list(shape)} has more than {MAX_NOISE_ELEMENTS} elements per row")
        object.__setattr__(self, "shape", shape)
        if not isinstance(self.params, Mapping):
            raise ManifestError(f"{where}.params: must be an object, got {self.params!r}")
        params = dict(self.params)
        allowed = _PARAMS[self.kind]
        unknown = sorted(str(k) for k in params if k not in allowed)
        if unknown:
            raise ManifestError(f"{where}.params: unknown keys {unknown} for kind {self.kind!r}; "
                                f"allowed: {sorted(allowed)}")
        if self.kind == "dropout_mask":
            p = params.get("p")
            if (isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, float, np.integer, np.floating))
                    or not (0.0 <= float(p) < 1.0)):
                raise ManifestError(f"{where}.params.p: dropout_mask needs a number 0 <= p < 1, got {p!r}")
            params["p"] = float(p) if isinstance(p, (np.integer, np.floating)) else p
        if self.kind == "categorical":
            k = params.get("k")
            if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 2:
                raise ManifestError(f"{where}.params.k: categorical needs an integer k >= 2, got {k!r}")
            params["k"] = int(k)
            if not shape or shape[-1] != int(k):
                raise ManifestError(f"{where}.shape: categorical shape {list(shape)} must end with k = {int(k)}")
        object.__setattr__(self, "params", params)

    def to_json(self) -> Dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "shape": list(self.shape), "params": dict(self.params)}

    @classmethod
    def from_json(cls, obj: Any, where: str = "noise") -> "NoiseSpec":
        """Parse one JSON noise entry strictly: keys name, kind, shape and (optional) params."""
        if not isinstance(obj, Mapping):
            raise ManifestError(f"{where}: malformed noise entry: must be an object, got {type(obj).__name__}")
        unknown = sorted(str(k) for k in obj if k not in ("name", "kind", "shape", "params"))
        if unknown:
            raise ManifestError(f"{where}: malformed noise entry: unknown keys {unknown}; "
                                "allowed: ['kind', 'name', 'params', 'shape']")
        missing = [k for k in ("name", "kind", "shape") if k not in obj]
        if missing:
            raise ManifestError(f"{where}: malformed noise entry: missing {missing}")
        if not isinstance(obj["shape"], list):
            raise ManifestError(f"{where}.shape: must be a list of integers, got {obj['shape']!r}")
        try:
            return cls(name=obj["name"], kind=obj["kind"], shape=tuple(obj["shape"]), params=obj.get("params", {}))
        except ManifestError as exc:
            raise ManifestError(f"{where}: {exc}") from None


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


def sample_noise_for_sample(specs: Sequence[NoiseSpec], batch: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Every noise input of ONE sample for ``batch`` inputs, shape ``(batch, *spec.shape)``,
    drawn spec by spec in manifest order. The runtime draws a call's noise by calling this
    once per sample, in sample order, so the draws never depend on how rows are chunked."""
    return sample_noise(specs, batch, rng)


# -- the runtime's noise stream ----------------------------------------------------------------------
# What UncertaintyRuntime.predict feeds its head. Every head row (row s * B + b: sample s of input b)
# takes a FIXED number of 64-bit words from the generator's bit generator (``random_raw``), laid out
# spec by spec in manifest order, each spec's part padded to whole words:
#
#   dropout_mask     b = 8 or 16 bits per element: keep where u_b >= t, t = min(round(p * 2**b), 2**b - 1);
#                    the mask is 0 or 1 / (1 - p_eff) with p_eff = t / 2**b (the probability really
#                    used), so E[mask] = 1 exactly. b = 8 where that moves p by at most 2 % of
#                    min(p, 1 - p) (p = 0.1 -> p_eff = 26/256 = 0.1016, p = 0.2 -> 0.1992, p = 0.5
#                    exact; |p_eff - p| <= 2**-9), else b = 16 (|p_eff - p| <= 2**-17; e.g. p = 0.01);
#                    :func:`dropout_threshold` gives t, p_eff and b;
#   uniform          16 bits per element: (u16 + 1/2) * 2**-16, U(0, 1) quantised to the midpoints of
#                    2**16 equal cells: exact float32 values strictly inside (0, 1), mean 1/2 exactly,
#                    sup |F - x| = 2**-17;
#   standard_normal  16 bits per element: NORMAL_TABLE[u16], N(0, 1) quantised to 2**16 equiprobable
#                    atoms, the conditional means E[z | z in cell i] of its 2**16 quantile cells (a
#                    closed form, :func:`normal_table`): mean 0 exactly (the table is antisymmetric),
#                    sup |F - Phi| <= 2**-16, variance 1 - 1.5e-6, |z| <= 4.39 (the tail beyond the
#                    last cell's edge 4.17, probability 2**-16, sits in that cell's mean);
#   categorical      32 bits per one-hot row: index (u32 * k) >> 32 (bias <= k * 2**-32).
#
# Rows are consecutive draws of whole words, so the noise of rows [r0, r1) is the next
# (r1 - r0) * words_per_row words whatever the chunking: n rows at once equal the same rows drawn
# in any split (by samples or by row chunks), memory is bounded by the chunk, and all kinds of a
# chunk come from ONE raw draw. Words are read little-endian on every host. Decoding is integer
# compares, one float32 conversion, or one table gather: no transcendental function runs per draw
# (the normal table is computed once per process in float64 and rounded to float32).
#: Name of the stream above: which noise a seed yields. Anything stored that depends on it (the
#: expected mutual information of OTA canaries) records this name; change it whenever a change
#: here makes the same seed give other noise. Stream 1 (Box-Muller on 24-bit uniforms, 32-bit
#: uniforms) was replaced by stream 2 (16-bit quantised normals and uniforms); canaries recorded
#: under stream 1 are refused with a message naming both streams.
NOISE_STREAM = "raw64-fixed-words-per-row-2"
_BITS = {"uniform": 16, "standard_normal": 16, "categorical": 32}
#: A dropout mask uses 8-bit thresholds where |p_eff - p| <= this fraction of min(p, 1 - p).
DROPOUT_8BIT_REL_TOL = 0.02
_LEVELS = 1 << 16


def _count(spec: NoiseSpec) -> int:
    """Random values per row of ``spec`` (elements, or one-hot rows)."""
    e = math.prod(spec.shape)
    if spec.kind == "categorical":
        return e // int(spec.params["k"])
    return e


def row_layout(specs: Sequence[NoiseSpec]) -> Tuple[Tuple[int, int], ...]:
    """(first word, words) of each spec inside one row's words, manifest order."""
    out, off = [], 0
    for spec in specs:
        words = -(-_count(spec) * _bits(spec) // 64)
        out.append((off, words))
        off += words
    return tuple(out)


def words_per_row(specs: Sequence[NoiseSpec]) -> int:
    """How many 64-bit words one head row's noise takes from the bit generator."""
    return sum(w for _, w in row_layout(specs))


@functools.lru_cache(maxsize=256)
def dropout_threshold(p: float) -> Tuple[int, float, int]:
    """``(t, p_eff, bits)`` of a dropout mask of probability ``p``: each element takes ``bits`` (8 or
    16) random bits ``u`` and drops where ``u < t``, so ``p_eff = t / 2**bits`` is the drop
    probability really drawn. 8 bits where ``|p_eff - p| <= DROPOUT_8BIT_REL_TOL * min(p, 1 - p)``,
    else 16. Cached (decoding calls it once per spec and call)."""
    p = float(p)
    for bits in (8, 16):
        full = 1 << bits
        t = min(int(round(p * full)), full - 1)
        if bits == 16 or abs(t / full - p) <= DROPOUT_8BIT_REL_TOL * min(p, 1.0 - p):
            return t, t / full, bits
    raise AssertionError("unreachable")


def _bits(spec: NoiseSpec) -> int:
    return dropout_threshold(spec.params["p"])[2] if spec.kind == "dropout_mask" else _BITS[spec.kind]


@functools.lru_cache(maxsize=1)
def normal_table() -> np.ndarray:
    """The 2**16 atoms of the quantised standard normal, float32, read-only: atom ``i`` is the mean
    of N(0, 1) over its quantile cell ``[Phi^-1(i / 2**16), Phi^-1((i + 1) / 2**16))``, in closed
    form ``2**16 * (phi(a) - phi(b))`` for the cell ``(a, b)`` (``phi`` the density), computed for
    the upper half as ``-phi(a) * expm1(-(b - a)(b + a) / 2)`` (no cancellation near 0) and
    mirrored, so ``table[i] == -table[2**16 - 1 - i]``. About 20 ms, once per process."""
    nd = NormalDist()
    half = _LEVELS // 2
    a = np.array([0.0] + [nd.inv_cdf(0.5 + j / _LEVELS) for j in range(1, half)], dtype=np.float64)
    b = np.append(a[1:], np.inf)
    phi_a = np.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = -phi_a * np.expm1(-0.5 * (b - a) * (b + a))
    diff[-1] = phi_a[-1]                                   # the last cell reaches +inf: phi(b) = 0
    upper = (_LEVELS * diff).astype(np.float32)
    table = np.concatenate([-upper[::-1], upper])
    table.setflags(write=False)
    return table


def prepare_noise(specs: Sequence[NoiseSpec]) -> None:
    """Build what decoding ``specs`` needs once (the normal table, about 20 ms), so that the first
    ``predict`` call does not pay for it."""
    if any(s.kind == "standard_normal" for s in specs):
        normal_table()


def _decode(spec: NoiseSpec, raw: np.ndarray, off: int, rows: int) -> np.ndarray:
    """Noise of ``spec`` for ``rows`` rows from its words at ``off`` of each row of ``raw`` (rows,
    words per row), little-endian; the dtype views are taken on the whole C-contiguous ``raw``
    (then sliced), which every numpy version allows. The plain decoder of one spec: what
    :func:`sample_noise_rows` computes through its cached plan (:func:`_plan`), the same values."""
    n = _count(spec)
    if spec.kind == "dropout_mask":
        t, p_eff, bits = dropout_threshold(spec.params["p"])
        u = raw.view("u1")[:, 8 * off:8 * off + n] if bits == 8 else raw.view("<u2")[:, 4 * off:4 * off + n]
        out = np.greater_equal(u, t).astype(np.float32)
        out *= np.float32(1.0 / (1.0 - p_eff))
        return out.reshape((rows,) + spec.shape)
    if spec.kind != "categorical":
        u16 = raw.view("<u2")[:, 4 * off:4 * off + n]
        if spec.kind == "standard_normal":
            out = normal_table().take(u16, mode="wrap")   # u16 < 2**16: "wrap" only skips the bounds check
        else:  # uniform
            out = u16.astype(np.float32)
            out += np.float32(0.5)
            out *= np.float32(2.0 ** -16)
        return out.reshape((rows,) + spec.shape)
    u32 = raw.view("<u4")[:, 2 * off:2 * off + n]
    k = int(spec.params["k"])
    index = (u32.astype(np.uint64) * np.uint64(k)) >> np.uint64(32)
    return np.eye(k, dtype=np.float32)[index].reshape((rows,) + spec.shape)


# -- decoding plans: the same values as _decode, fewer numpy calls and passes, no per-call layout work ---
# A plan is built once per tuple of spec objects (cached by identity; NoiseSpec is frozen, and its params
# are not to be edited in place) and is a list
# of steps, each writing some specs' arrays from the call's raw words, seen as bytes (u1), little-endian
# 16-bit words (u2) or the words themselves (raw):
#  * a run of consecutive dropout specs with the same threshold (bits, t) compares the run's whole byte
#    range once (``keep``, one pass over 1 or 2 bytes per element), then each spec is its keep
#    slice cast to float32 and scaled in place by ``float32(1 / (1 - p_eff))`` (0 * s = +0 and
#    1 * s = s: the values ``astype(float32) * s`` gives), instead of compare + convert + scale per spec;
#  * a normal spec is one table gather on an index view already shaped ``(rows, *shape)``;
#  * a uniform spec is ``u16 * 2**-16 + 2**-17`` (exact in float32: the same cell midpoints);
#  * a categorical spec uses :func:`_decode`.
_Views = Tuple[np.ndarray, np.ndarray, np.ndarray]
_Step = Callable[..., None]   # (views, rows, out, into=None)
_PLANS: Dict[Any, Tuple[Tuple[NoiseSpec, ...], int, Tuple[_Step, ...]]] = {}
_MAX_PLANS = 64
_LITTLE = sys.byteorder == "little"


def _dropout_run_parts(members: Sequence[Tuple[NoiseSpec, int]], bits: int) -> Tuple[int, int, int, tuple]:
    """Where a run of dropout specs (``(spec, word offset)``, ``bits`` per element) lies in a row:
    (the view it reads, its first and end element in that view, per spec (name, output shape,
    start, end) relative to the first)."""
    per_word = 64 // bits
    view = 0 if bits == 8 else 1
    first = members[0][1]
    last_spec, last_off = members[-1]
    lo, hi = per_word * first, per_word * last_off + _count(last_spec)
    parts = tuple((s.name, (-1,) + s.shape, per_word * off - lo, per_word * off - lo + _count(s))
                  for s, off in members)
    return view, lo, hi, parts


def _dropout_run_step(members: Sequence[Tuple[NoiseSpec, int]], bits: int, t: int, p_eff: float) -> _Step:
    view, lo, hi, parts = _dropout_run_parts(members, bits)
    scale = np.float32(1.0 / (1.0 - p_eff))

    def step(views: _Views, rows: int, out: Dict[str, np.ndarray], into: Any = None) -> None:
        keep = np.greater_equal(views[view][:, lo:hi], t)
        for name, shape, a, b in parts:
            dest = None if into is None else into.get(name)
            if dest is None:
                arr = keep[:, a:b].astype(np.float32)   # an unbuffered cast, then an in-place scale:
                arr *= scale                            # cheaper than one mixed-type multiply, same values
                out[name] = arr.reshape(shape)
            else:   # the same cast and scale, written into the caller's array
                flat = dest.reshape(rows, b - a)
                np.copyto(flat, keep[:, a:b])
                flat *= scale
                out[name] = dest
    return step


def _joint_block(members: Sequence[Tuple[NoiseSpec, int]], parts: tuple, rows: int,
                 into: Mapping[str, np.ndarray]) -> Optional[np.ndarray]:
    """The (n, rows, count) float32 block that holds the arrays ``into`` has for a run of ``n >= 2``
    dropout specs of ``count`` elements each, where the run's elements lie back to back in a row and
    the arrays are consecutive slabs ``block[0], block[1], ...`` of one C-contiguous array (a caller
    that allocated them so); else None."""
    n = len(members)
    if n < 2:
        return None
    count = _count(members[0][0])
    if any(_count(spec) != count for spec, _ in members) or \
            any((a, b) != (i * count, (i + 1) * count) for i, (_, _, a, b) in enumerate(parts)):
        return None
    dests = [into.get(spec.name) for spec, _ in members]
    base = dests[0].base if dests[0] is not None else None
    if not isinstance(base, np.ndarray) or base.dtype != np.float32 or not base.flags.c_contiguous:
        return None
    slab = rows * count * 4
    first = dests[0].ctypes.data - base.ctypes.data
    if first % slab or first + n * slab > base.nbytes:
        return None
    for i, d in enumerate(dests):
        if d is None or d.base is not base or d.ctypes.data != base.ctypes.data + first + i * slab:
            return None
    block = base.reshape(-1)[first // 4:first // 4 + n * rows * count].reshape(n, rows, count)
    return block if np.shares_memory(block, dests[0]) else None


def _joint_run_step(members: Sequence[Tuple[NoiseSpec, int]], bits: int, t: int, p_eff: float, rows: int,
                    into: Mapping[str, np.ndarray]) -> _Step:
    """:func:`_dropout_run_step` for a caller's arrays laid out as one block (:func:`_joint_block`):
    the run's keep mask is cast into the whole block at once and scaled in place (the same values,
    two numpy calls instead of two per spec); any other layout gets the per-spec step."""
    view, lo, hi, parts = _dropout_run_parts(members, bits)
    block = _joint_block(members, parts, rows, into)
    if block is None:
        return _dropout_run_step(members, bits, t, p_eff)
    scale = np.float32(1.0 / (1.0 - p_eff))
    n, count = block.shape[0], block.shape[2]
    named = tuple((spec.name, into[spec.name]) for spec, _ in members)

    def step(views: _Views, rows_: int, out: Dict[str, np.ndarray], into_: Any = None) -> None:
        keep = np.greater_equal(views[view][:, lo:hi], t)
        np.copyto(block, keep.reshape(rows, n, count).transpose(1, 0, 2))
        np.multiply(block, scale, out=block)
        for name, d in named:
            out[name] = d
    return step


def _normal_step(spec: NoiseSpec, off: int) -> _Step:
    name, shape, a, b, table = spec.name, spec.shape, 4 * off, 4 * off + _count(spec), normal_table()

    def step(views: _Views, rows: int, out: Dict[str, np.ndarray], into: Any = None) -> None:
        # the index view (rows, *shape) gives the output its shape; u16 < 2**16: "wrap" never wraps
        out[name] = table.take(views[1][:, a:b].reshape((rows,) + shape), mode="wrap")
    return step


def _uniform_step(spec: NoiseSpec, off: int) -> _Step:
    name, shape, a, b = spec.name, (-1,) + spec.shape, 4 * off, 4 * off + _count(spec)

    def step(views: _Views, rows: int, out: Dict[str, np.ndarray], into: Any = None) -> None:
        arr = np.multiply(views[1][:, a:b], np.float32(2.0 ** -16), dtype=np.float32)   # exact
        arr += np.float32(2.0 ** -17)
        out[name] = arr.reshape(shape)
    return step


def _plain_step(spec: NoiseSpec, off: int) -> _Step:
    def step(views: _Views, rows: int, out: Dict[str, np.ndarray], into: Any = None) -> None:
        out[spec.name] = _decode(spec, views[2], off, rows)
    return step


def _build_plan(specs: Tuple[NoiseSpec, ...],
                dropout_run_step: Callable[..., _Step] = _dropout_run_step) -> Tuple[int, Tuple[_Step, ...]]:
    """(words per row, steps) of ``specs``; ``dropout_run_step(members, bits, t, p_eff)`` makes the
    step of each run of dropout specs (bench/noise_share.py builds its before/after comparator
    with another one)."""
    layout = row_layout(specs)
    steps: List[_Step] = []
    i = 0
    while i < len(specs):
        spec, (off, _) = specs[i], layout[i]
        if spec.kind == "dropout_mask":
            key = dropout_threshold(spec.params["p"])
            j = i + 1
            while j < len(specs) and specs[j].kind == "dropout_mask" and \
                    dropout_threshold(specs[j].params["p"]) == key:
                j += 1
            t, p_eff, bits = key
            steps.append(dropout_run_step([(specs[k], layout[k][0]) for k in range(i, j)], bits, t, p_eff))
            i = j
            continue
        steps.append(_normal_step(spec, off) if spec.kind == "standard_normal" else
                     _uniform_step(spec, off) if spec.kind == "uniform" else _plain_step(spec, off))
        i += 1
    return sum(w for _, w in layout), tuple(steps)


def _plan(specs: Sequence[NoiseSpec]) -> Tuple[int, Tuple[_Step, ...]]:
    """(words per row, steps) of ``specs``, built once per sequence of spec objects. A tuple (a
    manifest's ``noise``) is looked up by its own identity, anything else by its items' identities;
    the cache holds the objects, so an id is never reused while its entry lives."""
    if type(specs) is tuple:
        hit = _PLANS.get(id(specs))
        if hit is not None and hit[0] is specs:
            return hit[1], hit[2]
        key: Any = id(specs)
    else:
        key = tuple(map(id, specs))
        hit = _PLANS.get(key)
        if hit is not None and len(hit[0]) == len(specs) and all(x is y for x, y in zip(hit[0], specs)):
            return hit[1], hit[2]
    held = specs if type(specs) is tuple else tuple(specs)
    width, steps = _build_plan(held)
    if len(_PLANS) >= _MAX_PLANS:
        _PLANS.clear()
    _PLANS[key] = (held, width, steps)
    return width, steps


def _check_into(specs: Sequence[NoiseSpec], rows: int, into: Mapping[str, np.ndarray]) -> None:
    for spec in specs:
        d = into.get(spec.name)
        if d is not None and (not isinstance(d, np.ndarray) or d.dtype != np.float32 or
                              d.shape != (rows,) + spec.shape or not d.flags.c_contiguous):
            raise ValueError(f"into[{spec.name!r}] must be a C-contiguous float32 array of shape "
                             f"{(rows,) + spec.shape}, got {getattr(d, 'dtype', type(d).__name__)} "
                             f"{getattr(d, 'shape', '')}")


def _draw_rows(width: int, steps: Tuple[_Step, ...], rows: int, rng: np.random.Generator,
               dest: Optional[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """One ``random_raw`` draw of ``rows`` rows decoded by ``steps`` (the specs' plan), written into
    ``dest``'s arrays where it has them (already checked by :func:`_check_into`)."""
    raw = rng.bit_generator.random_raw(rows * width)
    if not _LITTLE:
        raw = raw.astype("<u8")   # the stream reads words little-endian on every host
    raw = raw.reshape(rows, width)
    views = (raw.view("u1"), raw.view("<u2"), raw)
    decoded: Dict[str, np.ndarray] = {}
    for step in steps:   # the steps write the specs in manifest order
        step(views, rows, decoded, dest)
    if dest is not None:   # specs whose step has no in-place form: copied into the caller's array
        for name, d in dest.items():
            if name in decoded and decoded[name] is not d:
                np.copyto(d, decoded[name])
                decoded[name] = d
    return decoded


def sample_noise_rows(specs: Sequence[NoiseSpec], rows: int, rng: np.random.Generator,
                      into: Optional[Mapping[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """The next ``rows`` head rows of the runtime's noise stream (see above), every spec,
    shape ``(rows, *spec.shape)`` float32, C-contiguous: one ``random_raw`` draw, decoded by the
    specs' cached plan (the values of :func:`_decode`, spec by spec). ``into``: float32 C-contiguous
    arrays of those shapes (some or all specs, by name) that receive the values and are returned
    instead of new arrays (for a caller that feeds the same buffers every time, e.g. a bound graph;
    :func:`noise_writer` checks them once for such a caller)."""
    if rows <= 0:
        raise ValueError(f"number of noise rows must be positive, got {rows}")
    if not specs:
        return {}
    width, steps = _plan(specs)
    if into is not None:
        _check_into(specs, rows, into)
    return _draw_rows(width, steps, rows, rng, into)


def noise_writer(specs: Sequence[NoiseSpec], rows: int,
                 into: Mapping[str, np.ndarray]) -> Callable[[np.random.Generator], None]:
    """``sample_noise_rows(specs, rows, rng, into=into)`` for a caller that draws into the same
    arrays every time (a stream's hop): the plan is built and the arrays are checked once, here,
    instead of at every draw. Each call of the returned function draws the next ``rows`` rows of
    ``rng``'s stream into the arrays (one for every spec, by name; they must stay alive and keep
    their shapes). Consecutive dropout specs of one threshold and size whose arrays are consecutive
    slabs of one array (``block[0], block[1], ...``) are written together (:func:`_joint_run_step`)."""
    if rows <= 0:
        raise ValueError(f"number of noise rows must be positive, got {rows}")
    missing = [s.name for s in specs if s.name not in into]
    if missing:
        raise ValueError(f"noise_writer needs an array for every noise input, missing {missing}")
    _check_into(specs, rows, into)
    if not specs:
        return lambda rng: None
    dest = {s.name: into[s.name] for s in specs}
    # the plan of _plan, except that a run of dropout specs whose arrays are one block is written at once
    width, steps = _build_plan(tuple(specs), lambda members, bits, t, p_eff:
                               _joint_run_step(members, bits, t, p_eff, rows, dest))

    def draw(rng: np.random.Generator) -> None:
        _draw_rows(width, steps, rows, rng, dest)
    return draw


def sample_noise_for_sample(specs: Sequence[NoiseSpec], batch: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """Every noise input of ONE sample for ``batch`` inputs, shape ``(batch, *spec.shape)``: the
    next ``batch`` rows of the runtime's stream (row chunks of a sample are the same draws)."""
    return sample_noise_rows(specs, batch, rng)


def sample_noise_samples(specs: Sequence[NoiseSpec], samples: int, batch: int,
                         rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """The noise of ``samples`` consecutive samples, rows ``s * batch + b``: exactly what
    ``samples`` calls of :func:`sample_noise_for_sample` draw, in one draw."""
    if samples <= 0 or batch <= 0:
        raise ValueError(f"samples and batch must be positive, got {samples} and {batch}")
    return sample_noise_rows(specs, samples * batch, rng)


def sample_noise_tiled(specs: Sequence[NoiseSpec], samples: int, batch: int,
                       rng: np.random.Generator) -> Dict[str, np.ndarray]:
    """The noise ``UncertaintyRuntime.predict`` draws from ``rng`` for ``samples`` x ``batch``
    rows, stacked s-major (row ``s * batch + b``): shape ``(samples * batch, *spec.shape)``.
    Written sample by sample (the definition); the runtime draws the same rows in chunks of
    whole samples or of rows (same values, see the stream above). Memory grows with
    ``samples * batch``."""
    if samples <= 0 or batch <= 0:
        raise ValueError(f"samples and batch must be positive, got {samples} and {batch}")
    parts = [sample_noise_for_sample(specs, batch, rng) for _ in range(samples)]
    return {s.name: np.concatenate([p[s.name] for p in parts], axis=0) for s in specs}


def noise_specs_from_json(items: Any) -> Tuple[NoiseSpec, ...]:
    if not isinstance(items, list):
        raise ManifestError(f"noise: must be a list, got {type(items).__name__}")
    specs = tuple(NoiseSpec.from_json(o, f"noise[{i}]") for i, o in enumerate(items))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ManifestError(f"noise: names must be unique, duplicated: {sorted({n for n in names if names.count(n) > 1})}")
    return specs
