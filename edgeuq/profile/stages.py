"""Per-stage latency of one inference through the device runtime: the stage profiler lives in
:mod:`edgeuq_runtime.profiling` (numpy only, so the board's timing agent runs the same code);
re-exported here. See that module for what each stage is and what cannot be separated."""
from __future__ import annotations

from edgeuq_runtime.profiling import HostProfile, StageProfiler, example_input, profile_host  # noqa: F401

__all__ = ["StageProfiler", "HostProfile", "example_input", "profile_host"]
