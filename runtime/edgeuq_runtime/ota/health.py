"""Fleet health reports from a device: canary and in-service numbers for a staged rollout.

    meter = HealthMeter(HealthPolicy(abstain_confidence=0.6))
    result = serve_window(root, rt, x)          # or rt.predict(x)
    meter.observe(result, latency_ms)           # per batch; meter.error() on a failure
    send_report(meter.report(device_id, release, sha256), "http://127.0.0.1:8765/report")

A report is one JSON object (``schema`` 1): device id, the release and its bundle target
sha256, the phase (``canary``: right after an install; ``service``: windows served), and counts
-- windows, abstained, ood (out-of-distribution), errors -- plus per-window latency p50 and p99.
Counts, not rates, so the collector can pool devices. A window *abstains* when its confidence
is below ``abstain_confidence`` or its epistemic uncertainty (mutual information) is above
``abstain_epistemic``; it is *OOD* when its input was flagged (flat, clipped) or its epistemic
uncertainty is above ``ood_epistemic``. With a calibration section, pass the calibrated
decisions instead (``observe(..., abstained=..., ood=...)``).

``send_report`` posts to an ``http://`` collector (stdlib urllib, a timeout, no retries) or
drops the report atomically into a directory (the collector reads the folder).
"""
from __future__ import annotations

import json
import math
import os
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..atomic import atomic_write

__all__ = ["HealthPolicy", "HealthMeter", "canary_report", "send_report", "validate_report", "running_release", "SCHEMA",
           "PHASES"]

SCHEMA = 1
PHASES = ("canary", "service")


@dataclass(frozen=True)
class HealthPolicy:
    abstain_confidence: float = 0.6
    abstain_epistemic: Optional[float] = None
    ood_epistemic: Optional[float] = 0.2

    def __post_init__(self) -> None:
        for name in ("abstain_confidence", "abstain_epistemic", "ood_epistemic"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"HealthPolicy.{name} must be a finite number >= 0 or None, got {v!r}")


@dataclass
class HealthMeter:
    policy: HealthPolicy = field(default_factory=HealthPolicy)
    windows: int = 0
    abstained: int = 0
    ood: int = 0
    errors: int = 0
    latencies_ms: List[float] = field(default_factory=list)

    def observe(self, result: Any, latency_ms: float, abstained: Optional[Sequence[bool]] = None,
                ood: Optional[Sequence[bool]] = None) -> None:
        """One served batch: ``latency_ms`` is the batch's wall time (spread evenly over its rows)."""
        conf = np.asarray(result.confidence, dtype=np.float64)
        epi = np.asarray(result.epistemic, dtype=np.float64)
        n = int(conf.shape[0])
        if abstained is None:
            ab = ~(conf >= self.policy.abstain_confidence)  # NaN abstains
            if self.policy.abstain_epistemic is not None:
                ab |= ~(epi <= self.policy.abstain_epistemic)
        else:
            ab = np.asarray(abstained, dtype=bool)
        if ood is None:
            flags = result.input_flags or ("",) * n
            od = np.array([bool(f) for f in flags], dtype=bool)
            if self.policy.ood_epistemic is not None:
                od |= ~(epi <= self.policy.ood_epistemic)
        else:
            od = np.asarray(ood, dtype=bool)
        if ab.shape != (n,) or od.shape != (n,):
            raise ValueError(f"abstained/ood must have one entry per row ({n})")
        self.windows += n
        self.abstained += int(ab.sum())
        self.ood += int(od.sum())
        self.latencies_ms.extend([float(latency_ms) / max(n, 1)] * n)

    def error(self, count: int = 1) -> None:
        self.errors += int(count)

    def report(self, device_id: str, release: Optional[int], sha256: Optional[str], phase: str = "service") -> Dict[str, Any]:
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        return _report(device_id, release, sha256, phase, self.windows, self.abstained, self.ood, self.errors,
                       float(np.percentile(lat, 50)) if lat.size else None,
                       float(np.percentile(lat, 99)) if lat.size else None)


def _report(device_id: str, release: Optional[int], sha256: Optional[str], phase: str, windows: int, abstained: int,
            ood: int, errors: int, p50: Optional[float], p99: Optional[float], **extra: Any) -> Dict[str, Any]:
    rep = {"schema": SCHEMA, "device_id": device_id, "release": release, "sha256": sha256, "phase": phase,
           "windows": int(windows), "abstained": int(abstained), "ood": int(ood), "errors": int(errors),
           "latency_p50_ms": p50, "latency_p99_ms": p99, "time": time.time(), **extra}
    validate_report(rep)
    return rep


def running_release(root: Path):
    """(release, bundle target sha256) of the slot ``current`` points to, or (None, None)."""
    from .slots import link_slot, read_state

    link = link_slot(Path(root))
    info = (read_state(Path(root)).get("slots") or {}).get(link or "", {})
    return info.get("release"), info.get("sha256")


def canary_report(device_id: str, outcome: Dict[str, Any], sha256: Optional[str]) -> Dict[str, Any]:
    """The canary phase from an ``OtaUpdater.update()`` outcome of status ``installed``."""
    c = outcome["canaries"]
    return _report(device_id, outcome["release"], sha256, "canary", c["windows"], 0, 0,
                   c["windows"] - c["class_ok"], c["latency_ms"], c["latency_ms"], mi_max_error=c["mi_max_error"])


def validate_report(rep: Any) -> Dict[str, Any]:
    """Raise ValueError naming the field when ``rep`` is not a well-formed report."""
    if not isinstance(rep, dict):
        raise ValueError(f"a health report must be a JSON object, got {type(rep).__name__}")
    if rep.get("schema") != SCHEMA:
        raise ValueError(f"report.schema must be {SCHEMA}, got {rep.get('schema')!r}")
    if not isinstance(rep.get("device_id"), str) or not rep["device_id"] or len(rep["device_id"]) > 200:
        raise ValueError(f"report.device_id must be a non-empty string, got {rep.get('device_id')!r}")
    if rep.get("phase") not in PHASES:
        raise ValueError(f"report.phase must be one of {PHASES}, got {rep.get('phase')!r}")
    sha = rep.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64 or set(sha) - set("0123456789abcdef")):
        raise ValueError(f"report.sha256 must be a sha256 hex digest or null, got {sha!r}")
    for k in ("windows", "abstained", "ood", "errors"):
        v = rep.get(k)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"report.{k} must be an integer >= 0, got {v!r}")
    if rep["abstained"] > rep["windows"] or rep["ood"] > rep["windows"]:
        raise ValueError("report.abstained and report.ood cannot exceed report.windows")
    for k in ("latency_p50_ms", "latency_p99_ms"):
        v = rep.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0):
            raise ValueError(f"report.{k} must be a finite number >= 0 or null, got {v!r}")
    return rep


def send_report(rep: Dict[str, Any], dest: str, timeout: float = 5.0) -> None:
    """POST ``rep`` to an ``http://`` collector, or drop it atomically into the directory ``dest``."""
    validate_report(rep)
    body = json.dumps(rep, sort_keys=True).encode()
    if dest.startswith(("http://", "https://")):
        req = urllib.request.Request(dest, data=body, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - URL from the device config
            if resp.status not in (200, 201, 204):
                raise OSError(f"collector {dest} answered HTTP {resp.status}")
        return
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    name = f"{rep['device_id']}.{rep['phase']}.{time.time_ns()}.{os.getpid()}"
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
    atomic_write(d / f"{safe}.json", body, durable=True, mkdir=False)
