"""The ``preprocessing`` manifest section: an optional physics front end before normalisation.

Two front ends exist. ``"order"``, order tracking (:func:`edgeuq_runtime.preprocess.order_track`):
each time window is resampled to shaft angle so that every revolution has ``samples_per_rev``
samples, which makes bearing fault lines (fixed multiples of the shaft speed) independent of the
speed. ``"order_envelope"``: the same, then the log envelope spectrum of the order-domain window
(:func:`~edgeuq_runtime.preprocess.envelope_spectrum`; ``length`` bins on an order axis)::

    "preprocessing": {"front_end": "order", "samples_per_rev": 450,
                      "rpm_min": 1600.0, "rpm_max": 2000.0, "harmonics": 16}

The graph input keeps ``input.length`` samples (``length / samples_per_rev`` revolutions). The shaft
speed is the caller's (``rpm=`` of :meth:`UncertaintyRuntime.predict`, e.g. a tachometer or the
drive's reported speed) or, when not given, estimated per window from its spectrum within
``[rpm_min, rpm_max]`` with ``harmonics`` comb teeth (:func:`~edgeuq_runtime.preprocess.estimate_shaft_hz`;
short windows give coarse estimates: measure before relying on it). The parser is strict (unknown or
missing keys, wrong types, non-finite numbers and an empty speed range are refused, naming the
field); a bundle without the section has no front end, as before.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional

import numpy as np

from . import _checks as c
from .errors import InputError, ManifestError
from .preprocess import envelope_spectrum, order_track

__all__ = ["SECTION", "FRONT_ENDS", "OrderFrontEnd", "parse_preprocessing", "preprocessing_to_json",
           "front_end_of", "apply_front_end"]

SECTION = "preprocessing"
#: "order": order-domain windows; "order_envelope": their log envelope spectra (order axis)
FRONT_ENDS = ("order", "order_envelope")
_KEYS = {"front_end", "samples_per_rev", "rpm_min", "rpm_max", "harmonics"}
MAX_SAMPLES_PER_REV = 1 << 20


def _fail(field: str, msg: str) -> ManifestError:
    return c.fail(f"{SECTION}.{field}", msg)


def _num(field: str, v: Any) -> float:
    return c.positive_float(f"{SECTION}.{field}", v)


def _int(field: str, v: Any, hi: int) -> int:
    return c.integer(f"{SECTION}.{field}", v, lo=1, hi=hi)


@dataclass(frozen=True)
class OrderFrontEnd:
    """Order tracking: ``samples_per_rev`` samples per shaft revolution; speeds in
    ``[rpm_min, rpm_max]`` rpm (the estimator's search range; a given speed below
    ``60 * fs / samples_per_rev`` is refused since the window then holds too few revolutions)."""

    samples_per_rev: int
    rpm_min: float
    rpm_max: float
    harmonics: int = 16
    front_end: str = "order"

    def __post_init__(self) -> None:
        if self.front_end not in FRONT_ENDS:
            raise _fail("front_end", f"must be one of {list(FRONT_ENDS)}, got {self.front_end!r}")
        object.__setattr__(self, "samples_per_rev", _int("samples_per_rev", self.samples_per_rev, MAX_SAMPLES_PER_REV))
        object.__setattr__(self, "rpm_min", _num("rpm_min", self.rpm_min))
        object.__setattr__(self, "rpm_max", _num("rpm_max", self.rpm_max))
        object.__setattr__(self, "harmonics", _int("harmonics", self.harmonics, 256))
        if not self.rpm_min < self.rpm_max:
            raise _fail("rpm_max", f"must exceed rpm_min ({self.rpm_min:g}), got {self.rpm_max:g}")

    @classmethod
    def for_rate(cls, fs: float, rpm_min: float, rpm_max: float, harmonics: int = 16,
                 front_end: str = "order") -> "OrderFrontEnd":
        """The largest ``samples_per_rev`` whose windows are covered at ``rpm_min``: floor(60 fs / rpm_min)."""
        return cls(samples_per_rev=int(math.floor(60.0 * float(fs) / float(rpm_min))), rpm_min=rpm_min,
                   rpm_max=rpm_max, harmonics=harmonics, front_end=front_end)

    def check_rate(self, fs: float) -> None:
        """Refuse a spec that cannot cover its own speed range at sample rate ``fs``."""
        lowest = 60.0 * float(fs) / self.samples_per_rev
        if self.rpm_min < lowest * (1 - 1e-9):
            raise _fail("rpm_min", f"{self.rpm_min:g} rpm is below 60 * fs / samples_per_rev = {lowest:.6g} rpm at "
                                   f"{float(fs):g} Hz: windows would hold too few revolutions")
        if (self.harmonics + 1) * self.rpm_max / 60.0 >= float(fs) / 2:
            raise _fail("harmonics", f"(harmonics + 1) * rpm_max / 60 must stay below the Nyquist rate {fs / 2:g} Hz")

    def apply(self, x: np.ndarray, fs: float, rpm: Any = None) -> np.ndarray:
        """(B, L) time windows -> (B, L) float32 order-domain windows (not yet normalised)."""
        if rpm is not None:
            r = np.asarray(rpm, dtype=np.float64)
            if r.ndim > 1 or (r.ndim == 1 and r.shape[0] != np.asarray(x).reshape(-1, np.asarray(x).shape[-1]).shape[0]):
                raise InputError(f"rpm must be a scalar or one value per window, got shape {r.shape}")
        out = order_track(x, fs, self.samples_per_rev, self.rpm_min, self.rpm_max, self.harmonics, rpm=rpm)
        return envelope_spectrum(out) if self.front_end == "order_envelope" else out

    def to_json(self) -> Dict[str, Any]:
        return {"front_end": self.front_end, "samples_per_rev": self.samples_per_rev, "rpm_min": self.rpm_min,
                "rpm_max": self.rpm_max, "harmonics": self.harmonics}


def parse_preprocessing(value: Any, where: str = SECTION) -> OrderFrontEnd:
    c.obj_keys(where, value, _KEYS, _KEYS)
    if value["front_end"] not in FRONT_ENDS:
        raise _fail("front_end", f"must be one of {list(FRONT_ENDS)}, got {value['front_end']!r}")
    return OrderFrontEnd(samples_per_rev=value["samples_per_rev"], rpm_min=value["rpm_min"],
                         rpm_max=value["rpm_max"], harmonics=value["harmonics"], front_end=value["front_end"])


def preprocessing_to_json(spec: OrderFrontEnd) -> Dict[str, Any]:
    if not isinstance(spec, OrderFrontEnd):
        raise ManifestError(f"{SECTION}: expected an OrderFrontEnd, got {type(spec).__name__}")
    return spec.to_json()


def front_end_of(manifest: Any) -> Optional[OrderFrontEnd]:
    """The manifest's front end, or None (no ``preprocessing`` section: an older bundle)."""
    return dict(getattr(manifest, "sections", {}) or {}).get(SECTION)


def apply_front_end(spec: Optional[OrderFrontEnd], x: np.ndarray, fs: float, rpm: Any = None) -> np.ndarray:
    """``spec.apply`` or ``x`` unchanged when there is no front end (``rpm`` must then be None)."""
    if spec is None:
        if rpm is not None:
            raise InputError("rpm was given but this bundle has no order-tracking front end (no 'preprocessing' section)")
        return x
    return spec.apply(x, fs, rpm)


def _register() -> None:
    from .manifest import register_manifest_section

    register_manifest_section(SECTION, parse_preprocessing, preprocessing_to_json)


_register()
