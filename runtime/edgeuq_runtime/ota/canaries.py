"""Uncertainty canaries: windows shipped in the bundle whose class and mutual information
the new model must reproduce on the device, within a latency budget, before it is committed.

The bundle carries the windows as a file listed (and hashed) in ``manifest.json`` and a
top-level manifest section ``"canaries"``::

    "canaries": {"file": "canaries.npz", "array": "windows", "seed": 0, "samples": 16,
                 "expected_class": [2, 0, ...], "expected_mi": [0.013, ...],
                 "mi_tolerance": 0.02, "latency_budget_ms": 250.0,
                 "noise_stream": "raw64-fixed-words-per-row-2"}

The expected values are computed on the host with this same runtime (fixed seed, one
batched call), so a faithful install reproduces them to float rounding -- provided the
device's runtime draws the same noise for that seed. ``noise_stream`` names the noise stream
(:data:`edgeuq_runtime.noise.NOISE_STREAM`) the expected values were computed with; a device
whose runtime draws another stream refuses the update as ``canary-stream`` (its Monte-Carlo
samples differ, so its mutual information says nothing about the model) instead of reporting
an unexplained ``canary-mi``. Sections written before the field existed carry none; their
``canary-mi`` refusals say so.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np

from .. import _checks as c
from ..manifest import register_manifest_section
from ..noise import NOISE_STREAM
from .core import CanaryReport, check_canaries
from .errors import UpdateRefused

__all__ = ["SECTION", "CanarySpec", "parse_canaries", "canaries_to_json", "canaries_of", "run_canaries",
           "observe"]

SECTION = "canaries"
_KEYS = {"file", "array", "seed", "samples", "expected_class", "expected_mi", "mi_tolerance", "latency_budget_ms",
         "noise_stream"}
_MAX_STREAM_NAME = 64


@dataclass(frozen=True)
class CanarySpec:
    file: str
    expected_class: Tuple[int, ...]
    expected_mi: Tuple[float, ...]
    mi_tolerance: float
    latency_budget_ms: float
    seed: int = 0
    samples: int = 16
    array: str = "windows"
    #: The noise stream the expected values were computed with (None: not recorded).
    noise_stream: Optional[str] = None

    def to_json(self) -> Dict[str, Any]:
        out = {"file": self.file, "array": self.array, "seed": self.seed, "samples": self.samples,
               "expected_class": list(self.expected_class), "expected_mi": list(self.expected_mi),
               "mi_tolerance": self.mi_tolerance, "latency_budget_ms": self.latency_budget_ms}
        if self.noise_stream is not None:
            out["noise_stream"] = self.noise_stream
        return out


# the strict-JSON toolkit (edgeuq_runtime._checks)
_fail, _int = c.fail, c.integer


def _float(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _fail(where, f"must be a finite number >= 0, got {v!r}")
    return float(v)


def parse_canaries(obj: Any, where: str = SECTION) -> CanarySpec:
    """Validate the ``canaries`` manifest section; errors name the field (``canaries.expected_mi``)."""
    if not isinstance(obj, dict):
        raise _fail(where, f"must be an object, got {type(obj).__name__}")
    extra, missing = sorted(set(obj) - _KEYS), sorted({"file", "expected_class", "expected_mi", "mi_tolerance",
                                                       "latency_budget_ms"} - set(obj))
    if extra or missing:
        raise _fail(where, f"unknown keys {extra} / missing keys {missing}; allowed: {sorted(_KEYS)}")
    f = obj["file"]
    if not isinstance(f, str) or not f or f.startswith("/") or ".." in f.split("/"):
        raise _fail(f"{where}.file", f"must be a safe relative file name, got {f!r}")
    stream = obj.get("noise_stream")
    if stream is not None and (not isinstance(stream, str) or not 0 < len(stream) <= _MAX_STREAM_NAME
                               or not stream.isprintable()):
        raise _fail(f"{where}.noise_stream", f"must be a printable name of 1..{_MAX_STREAM_NAME} characters, "
                    f"got {str(stream)[:80]!r}")
    cls, mi = obj["expected_class"], obj["expected_mi"]
    if not isinstance(cls, list) or not cls:
        raise _fail(f"{where}.expected_class", "must be a non-empty list of class indices")
    if not isinstance(mi, list) or len(mi) != len(cls):
        raise _fail(f"{where}.expected_mi", f"must be a list as long as expected_class ({len(cls)})")
    return CanarySpec(
        file=f, array=str(obj.get("array", "windows")),
        expected_class=tuple(_int(f"{where}.expected_class[{i}]", v, 0) for i, v in enumerate(cls)),
        expected_mi=tuple(_float(f"{where}.expected_mi[{i}]", v) for i, v in enumerate(mi)),
        mi_tolerance=_float(f"{where}.mi_tolerance", obj["mi_tolerance"]),
        latency_budget_ms=_float(f"{where}.latency_budget_ms", obj["latency_budget_ms"]),
        seed=_int(f"{where}.seed", obj.get("seed", 0), 0), samples=_int(f"{where}.samples", obj.get("samples", 16), 1),
        noise_stream=stream,
    )


def canaries_to_json(spec: CanarySpec) -> Dict[str, Any]:
    return spec.to_json()


register_manifest_section(SECTION, parse_canaries, canaries_to_json)


def canaries_of(manifest: Any) -> Optional[CanarySpec]:
    """The bundle's canary spec (the top-level ``canaries`` manifest section), or ``None``."""
    return (getattr(manifest, "sections", None) or {}).get(SECTION)


def load_windows(bundle_dir: Path, spec: CanarySpec) -> np.ndarray:
    with np.load(Path(bundle_dir) / spec.file, allow_pickle=False) as z:
        if spec.array not in z.files:
            raise UpdateRefused("canary-class", f"canary file {spec.file!r} has no array {spec.array!r}")
        return np.asarray(z[spec.array])


def observe(runtime: Any, windows: np.ndarray, spec: CanarySpec) -> Tuple[list, list, float]:
    """(classes, mutual informations, median per-window latency in ms) of ``runtime`` on the canaries."""
    result = runtime.predict(windows, samples=spec.samples, seed=spec.seed)
    runtime.predict(windows[:1], samples=spec.samples, seed=spec.seed)  # warm-up
    times = []
    for i in range(len(windows)):
        t0 = time.perf_counter()
        runtime.predict(windows[i:i + 1], samples=spec.samples, seed=spec.seed)
        times.append((time.perf_counter() - t0) * 1e3)
    return ([int(v) for v in result.prediction], [float(v) for v in result.epistemic], float(np.median(times)))


def run_canaries(bundle_dir: Path, threads: Optional[int] = None) -> CanaryReport:
    """Load ``bundle_dir`` with :class:`UncertaintyRuntime` and check its canaries (raises UpdateRefused)."""
    from ..session import UncertaintyRuntime

    from ..bundle import load_bundle

    spec = canaries_of(load_bundle(bundle_dir, verify=False).manifest)
    if spec is None:
        raise UpdateRefused("canary-missing", "bundle carries no canaries section")
    if spec.noise_stream is not None and spec.noise_stream != NOISE_STREAM:
        raise UpdateRefused("canary-stream", f"the canaries' expected values were computed with noise stream "
                            f"{spec.noise_stream!r}, but this runtime draws {NOISE_STREAM!r}: the same seed gives "
                            "other Monte-Carlo samples here, so the mutual information cannot be compared; publish "
                            "canaries computed with a runtime of this device's noise stream")
    try:
        rt = UncertaintyRuntime(bundle_dir, threads=threads, verify=True)
        windows = load_windows(Path(bundle_dir), spec)
        cls, mi, ms = observe(rt, windows, spec)
    except UpdateRefused:
        raise
    except Exception as exc:  # a model that cannot even run its canaries is refused, not crashed on
        raise UpdateRefused("canary-run", f"the new model failed to run its canaries: {exc}") from None
    try:
        return check_canaries(spec.expected_class, spec.expected_mi, spec.mi_tolerance, spec.latency_budget_ms,
                              cls, mi, ms)
    except UpdateRefused as exc:
        if exc.reason != "canary-mi" or spec.noise_stream is not None:
            raise
        raise UpdateRefused("canary-mi", f"{exc.detail} (the canaries do not record the noise stream they were "
                            f"computed with; this runtime draws {NOISE_STREAM!r}, and canaries computed with "
                            "another stream fail here too)") from None
