"""Add uncertainty canaries to a bundle (host side), computed with the device runtime itself.

The expected class and mutual information of each canary window come from
``UncertaintyRuntime`` on this very bundle with a fixed seed and S, in one batched call —
exactly what the device repeats before committing the update. The section records the
runtime's noise stream (``noise_stream``), so a device drawing another stream refuses the
canaries as ``canary-stream`` rather than as a changed model.
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from edgeuq_runtime import UncertaintyRuntime, load_bundle
from edgeuq_runtime.noise import NOISE_STREAM
from edgeuq_runtime.ota.canaries import SECTION, CanarySpec, canaries_of, observe

__all__ = ["add_canaries", "synthetic_windows", "CANARY_FILE"]

CANARY_FILE = "canaries.npz"


def synthetic_windows(length: int, count: int = 8, seed: int = 0) -> np.ndarray:
    """Canary windows from the embedded bearing generator (records round robin, seeded offsets)."""
    from edgeuq.data.synthetic import DEFAULT_CONFIG, synthetic_records

    cfg = dataclasses.replace(DEFAULT_CONFIG, seed=seed, loads=DEFAULT_CONFIG.loads[:1],
                              severities=DEFAULT_CONFIG.severities[:1], normal_records_per_load=1)
    signals = [np.asarray(r.signal, dtype=np.float32) for r in synthetic_records(cfg)]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        sig = signals[i % len(signals)]
        if len(sig) < length:
            raise ValueError(f"synthetic record of {len(sig)} samples is shorter than the window {length}")
        start = int(rng.integers(0, len(sig) - length + 1))
        out.append(sig[start:start + length])
    return np.stack(out).astype(np.float32)


def add_canaries(bundle_dir: Path, windows: np.ndarray, *, seed: int = 0, samples: Optional[int] = None,
                 mi_tolerance: float = 0.01, latency_budget_ms: Optional[float] = None) -> CanarySpec:
    """Write ``canaries.npz`` into the bundle and the ``canaries`` section into its manifest.

    ``latency_budget_ms`` defaults to max(50 ms, 10 x the median per-window latency measured
    here); set it from the board's budget for a real fleet.
    """
    bundle_dir = Path(bundle_dir)
    bundle = load_bundle(bundle_dir, verify=True)
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 2 or windows.shape[1] != bundle.manifest.input.length or len(windows) == 0:
        raise ValueError(f"canary windows must have shape (n, {bundle.manifest.input.length}), got {windows.shape}")
    s = int(samples or bundle.manifest.default_samples)
    probe = CanarySpec(file=CANARY_FILE, expected_class=(0,), expected_mi=(0.0,), mi_tolerance=mi_tolerance,
                       latency_budget_ms=0.0, seed=int(seed), samples=s, noise_stream=NOISE_STREAM)
    rt = UncertaintyRuntime(bundle_dir, threads=1)
    cls, mi, ms = observe(rt, windows, probe)
    budget = float(latency_budget_ms) if latency_budget_ms is not None else round(max(50.0, 10.0 * ms), 3)
    spec = dataclasses.replace(probe, expected_class=tuple(cls), expected_mi=tuple(round(v, 9) for v in mi),
                               latency_budget_ms=budget)
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / CANARY_FILE
        np.savez(npz, windows=windows)
        bundle.amend(sections={SECTION: spec}, files={CANARY_FILE: npz})
    got = canaries_of(load_bundle(bundle_dir, verify=True).manifest)
    assert got is not None and got.expected_class == spec.expected_class
    return spec
