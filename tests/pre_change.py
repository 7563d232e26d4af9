"""A module as it was at an earlier commit, read from git and executed beside today's code: the
reference of the parity tests that route old code through shared pieces (same results before and
after). Without that commit in the clone's history (a shallow clone) the calling test skips and
says so."""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def module_at(commit: str, path: str, package: str) -> types.ModuleType:
    """The module ``path`` as it was at ``commit``, executed inside ``package`` (its relative
    imports resolve to today's modules)."""
    try:
        src = subprocess.run(["git", "-C", str(REPO), "show", f"{commit}:{path}"], check=True,
                             capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"pre-change source {path} at {commit[:12]} not available from git ({e}); "
                    "the parity check against the old code cannot run in this clone")
    name = f"{package}._pre_change_{commit[:12]}_{Path(path).stem}"
    if name in sys.modules:
        return sys.modules[name]
    mod = types.ModuleType(name)
    mod.__package__ = package
    sys.modules[name] = mod  # dataclasses look their module up while the source runs
    exec(compile(src, f"{commit[:12]}:{path}", "exec"), mod.__dict__)
    return mod
