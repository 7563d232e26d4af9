"""Fixed-point types for the FPGA head: parse ``ap_fixed<W,I,Q,O>`` strings and
emulate them in numpy (the *quantized reference* the C simulation is checked against).

The emulation applies a type's quantization and overflow modes to float64 values.
It is not bit-exact with Vivado's ``ap_fixed`` arithmetic in every corner (table
lookups, accumulator widths), which is why the lowering reports the measured
difference instead of asserting equality.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["FixedType", "parse_fixed", "quantize"]

_RE = re.compile(
    r"^\s*(?:ap_)?(?P<kind>fixed|ufixed|int|uint)\s*<\s*(?P<w>\d+)\s*(?:,\s*(?P<i>-?\d+))?"
    r"(?:\s*,\s*(?:AP_)?(?P<q>[A-Z_]+))?(?:\s*,\s*(?:AP_)?(?P<o>[A-Z_]+))?(?:\s*,\s*(?P<n>\d+))?\s*>\s*$"
)
_ROUNDING = ("TRN", "TRN_ZERO", "RND", "RND_ZERO", "RND_INF", "RND_MIN_INF", "RND_CONV")
_OVERFLOW = ("WRAP", "SAT", "SAT_ZERO", "SAT_SYM")


@dataclass(frozen=True)
class FixedType:
    """A signed or unsigned fixed-point type: ``width`` bits, ``integer`` of them integer bits."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "TRN"
    overflow: str = "WRAP"

    @property
    def fractional(self) -> int:
        return self.width - self.integer

    @property
    def lsb(self) -> float:
        return 2.0 ** -self.fractional

    @property
    def min(self) -> float:
        return -(2.0 ** (self.integer - 1)) if self.signed else 0.0

    @property
    def max(self) -> float:
        top = 2.0 ** (self.integer - 1) if self.signed else 2.0 ** self.integer
        return top - self.lsb

    def hls(self) -> str:
        """The Vivado HLS spelling, e.g. ``ap_fixed<16,6,AP_RND_CONV,AP_SAT>``."""
        kind = "ap_fixed" if self.signed else "ap_ufixed"
        if self.rounding == "TRN" and self.overflow == "WRAP":
            return f"{kind}<{self.width},{self.integer}>"
        return f"{kind}<{self.width},{self.integer},AP_{self.rounding},AP_{self.overflow}>"

    def __str__(self) -> str:
        return self.hls()


def parse_fixed(text: str, where: str = "precision") -> FixedType:
    """Parse ``ap_fixed<W,I[,Q[,O[,N]]]>``, ``ap_ufixed<...>``, ``ap_int<W>``, ``ap_uint<W>``
    (the ``ap_``/``AP_`` prefixes are optional, as in hls4ml's own spelling)."""
    if not isinstance(text, str):
        raise ValueError(f"{where}: a fixed-point type must be a string like 'ap_fixed<16,6>', got {text!r}")
    m = _RE.match(text)
    if not m:
        raise ValueError(f"{where}: {text!r} is not a fixed-point type; use e.g. 'ap_fixed<16,6>' or "
                         "'ap_fixed<16,6,AP_RND_CONV,AP_SAT>'")
    kind, w = m["kind"], int(m["w"])
    signed = kind in ("fixed", "int")
    if kind in ("int", "uint"):
        if m["i"] is not None:
            raise ValueError(f"{where}: {text!r}: ap_int/ap_uint take one width")
        i = w
    else:
        if m["i"] is None:
            raise ValueError(f"{where}: {text!r}: ap_fixed needs <width,integer bits>")
        i = int(m["i"])
    q, o = m["q"] or "TRN", m["o"] or "WRAP"
    if not 1 <= w <= 64:
        raise ValueError(f"{where}: {text!r}: width must be 1..64")
    if i > w or i < -w:
        raise ValueError(f"{where}: {text!r}: integer bits {i} out of range for width {w}")
    if q not in _ROUNDING:
        raise ValueError(f"{where}: {text!r}: unknown quantization mode {q!r}; known: {list(_ROUNDING)}")
    if o not in _OVERFLOW:
        raise ValueError(f"{where}: {text!r}: unknown overflow mode {o!r}; known: {list(_OVERFLOW)}")
    return FixedType(w, i, signed, q, o)


def _round(s: np.ndarray, mode: str) -> np.ndarray:
    """Round ``s`` (values in units of the lsb) to integers per an ap_fixed quantization mode."""
    if mode == "TRN":
        return np.floor(s)
    if mode == "TRN_ZERO":
        return np.trunc(s)
    if mode == "RND":          # half towards +inf
        return np.floor(s + 0.5)
    if mode == "RND_MIN_INF":  # half towards -inf
        return np.ceil(s - 0.5)
    if mode == "RND_ZERO":     # half towards zero
        return np.sign(s) * np.ceil(np.abs(s) - 0.5)
    if mode == "RND_INF":      # half away from zero
        return np.sign(s) * np.floor(np.abs(s) + 0.5)
    return np.round(s)         # RND_CONV: half to even


def quantize(x: np.ndarray, t: FixedType) -> np.ndarray:
    """Values of ``x`` after assignment to fixed-point type ``t`` (float64 result)."""
    s = _round(np.asarray(x, dtype=np.float64) * 2.0 ** t.fractional, t.rounding)
    lo = -(2.0 ** (t.width - 1)) if t.signed else 0.0
    hi = (2.0 ** (t.width - 1) - 1) if t.signed else (2.0 ** t.width - 1)
    if t.overflow == "WRAP":
        span = 2.0 ** t.width
        s = np.mod(s - lo, span) + lo
    elif t.overflow == "SAT_ZERO":
        s = np.where((s < lo) | (s > hi), 0.0, s)
    elif t.overflow == "SAT_SYM" and t.signed:
        s = np.clip(s, -hi, hi)
    else:
        s = np.clip(s, lo, hi)
    return s * 2.0 ** -t.fractional
