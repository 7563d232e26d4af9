"""The `placement` manifest section on the device: parsed strictly, written and loaded back, and the
runtime runs each graph on the executor the section chose (or refuses the bundle)."""
from __future__ import annotations

import copy
import json

import pytest

from edgeuq_runtime import ManifestError, UncertaintyRuntime, load_bundle
from edgeuq_runtime.executors.onnxruntime import OrtGraph
from edgeuq_runtime.placement import parse_placement, placement_of


def _cand(executor, target, default, median=None, status="measured", reason=""):
    timed = status == "measured"
    return {"executor": executor, "target": target, "lowering": executor, "default": default, "status": status,
            "median_ms": median if timed else None, "p90_ms": median * 1.5 if timed else None,
            "repeats": 20 if timed else None, "check": "native", "reason": reason}


def _doc():
    graph = {"executor": "onnxruntime", "target": "cpu", "lowering": "onnxruntime", "chosen_by": "fastest measured",
             "reason": "fastest median", "candidates": [_cand("tvm", "cpu", True, 0.4), _cand("onnxruntime", "cpu",
                                                                                               False, 0.1)]}
    return {"measured": "host", "where": "this host", "samples": 16, "warmup": 3, "repeats": 20,
            "graphs": {"trunk": copy.deepcopy(graph), "head": copy.deepcopy(graph)}}


def test_section_round_trips_and_the_graphs_run_on_the_chosen_executor(build_bundle, windows):
    tiny = build_bundle(sections={"placement": parse_placement(_doc())})
    data = json.loads((tiny.dir / "manifest.json").read_text())
    assert data["placement"] == _doc()
    rec = placement_of(load_bundle(tiny.dir).manifest)
    assert rec.graphs["head"].chosen.median_ms == 0.1 and rec.graphs["head"].chosen_by == "fastest measured"
    rt = UncertaintyRuntime(tiny.dir, seed=0)
    assert all(isinstance(r, OrtGraph) for r in rt.graph_runners.values())
    assert rt.predict(windows).probs.shape == (len(windows), 3)


def test_runtime_refuses_graphs_on_another_executor_than_chosen(build_bundle):
    doc = _doc()
    g = doc["graphs"]["trunk"]
    g["candidates"][0]["median_ms"], g["candidates"][0]["p90_ms"] = 0.05, 0.06   # tvm is now the fastest
    g.update(executor="tvm", lowering="tvm")
    tiny = build_bundle(sections={"placement": parse_placement(doc)})
    load_bundle(tiny.dir)  # the manifest itself is consistent ...
    with pytest.raises(ManifestError, match="graphs.trunk.backend: the graph runs on 'onnxruntime'.*chose 'tvm'"):
        UncertaintyRuntime(tiny.dir)  # ... but the trunk graph is not the chosen executor's


@pytest.mark.parametrize("edit, match", [
    (lambda d: d["graphs"]["head"].update(executor="tvm", lowering="tvm"), "not the smallest median"),
    (lambda d: d["graphs"]["head"]["candidates"][1].update(median_ms=float("nan")), "finite"),
    (lambda d: d["graphs"]["head"]["candidates"][1].update(p90_ms=0.01), "exceeds p90_ms"),
    (lambda d: d["graphs"]["head"]["candidates"][1].update(status="not measured", reason="x"), "carries no figures"),
    (lambda d: d["graphs"]["head"]["candidates"][1].update(status="excluded", median_ms=None, p90_ms=None,
                                                           repeats=None, reason="x"), "'fastest measured' needs"),
    (lambda d: d["graphs"]["head"]["candidates"].append(_cand("onnxruntime", "cpu", False, 0.2)), "twice"),
    (lambda d: d["graphs"]["head"].update(chosen_by="board default"), "not the default"),
    (lambda d: d.update(measured="not measured"), "although the section says 'not measured'"),
    (lambda d: d["graphs"]["trunk"]["candidates"][0].update(repeats=True), "repeats"),
    (lambda d: d["graphs"]["trunk"]["candidates"][0].update(speed=1), "unknown keys"),
    (lambda d: d.update(samples=0), "samples"),
])
def test_section_is_parsed_strictly(edit, match):
    parse_placement(_doc())
    doc = _doc()
    edit(doc)
    with pytest.raises(ManifestError, match=match):
        parse_placement(doc)


def test_unmeasured_section_keeps_the_default_with_no_figures():
    doc = _doc()
    doc.update(measured="not measured", where="no way to time the board")
    for g in doc["graphs"].values():
        g.update(executor="tvm", lowering="tvm", chosen_by="board default", reason="not measured")
        g["candidates"] = [_cand("tvm", "cpu", True, status="not measured", reason="no RPC"),
                           _cand("onnxruntime", "cpu", False, status="not measured", reason="no RPC")]
    rec = parse_placement(doc)
    assert all(c.median_ms is None for g in rec.graphs.values() for c in g.candidates)
    doc["graphs"]["head"]["chosen_by"] = "fastest measured"
    with pytest.raises(ManifestError, match="needs every usable candidate measured"):
        parse_placement(doc)
