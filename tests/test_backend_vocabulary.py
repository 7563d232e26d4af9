""""Backend" has one meaning (issue 20): the runtime executor a graph runs on (the bundle
manifest's ``backend`` field, a public format). On the host the lowering plug-in is a *lowerer*,
a compiled graph names its *executor*, and the Fisher's per-sample gradient estimator is
``FisherConfig.per_sample``. This test fails when the old words come back."""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edgeuq.fisher import FisherConfig
from edgeuq.lower import LOWERERS, CompiledGraph, LoweringNotAvailable, get_lowerer

ROOT = Path(__file__).resolve().parents[1]
#: code and docs where a lowerer might again be called a backend
SCANNED = ("edgeuq", "bench", "scripts", "docs")
#: "<lowering|lowerer|lower> backend", "backend per lowering", "lower(backend", "per backend" in lowering text
OLD_WORDS = re.compile(r"lowering\s+backend|lower\(\s*backend|Lowerer\S*\s+per\s+backend|backend\s+lowering")


def test_no_text_calls_the_lowerer_a_backend():
    offenders = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix not in (".py", ".md") or "__pycache__" in path.parts:
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                if OLD_WORDS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "a lowerer called a backend:\n" + "\n".join(offenders)


def test_the_scan_finds_the_old_words():
    for bad in ("one registered :class:`Lowerer` per backend", "A Lowerer per backend", "needs lowering backend 'x'",
                "def lower(backend: str, art)"):
        assert OLD_WORDS.search(bad), bad
    for good in ("the manifest's backend field", "needs lowerer 'x'", "graphs.trunk.backend"):
        assert not OLD_WORDS.search(good), good


def test_host_records_name_the_executor_and_the_per_sample_estimator():
    assert [f.name for f in dataclasses.fields(CompiledGraph)][:2] == ["file", "executor"]
    names = {f.name for f in dataclasses.fields(FisherConfig)}
    assert "per_sample" in names and "backend" not in names
    assert LOWERERS.label == "lowerer"
    try:
        get_lowerer("no_such_lowerer")
    except LoweringNotAvailable as exc:
        assert "unknown lowerer 'no_such_lowerer'" in str(exc), str(exc)
    else:
        raise AssertionError("an unknown lowerer was accepted")
