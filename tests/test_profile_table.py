"""The per-target tables are written by scripts/target_table.py from `edgeuq profile` reports and compile
evidence: each figure comes from a report, labelled by where it was measured, and "not measured" where no
report has it; the stored tables are exactly what the script makes of the stored reports."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from edgeuq.profile.report import LatencyReport, profile_table, save_latency_report, source_label

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("target_table", ROOT / "scripts" / "target_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _stats(median, p90=None, p99=None):
    p90 = median if p90 is None else p90
    p99 = p90 if p99 is None else p99
    return {"median_ms": median, "p90_ms": p90, "p99_ms": p99, "min_ms": median * 0.9, "mean_ms": median,
            "repeats": 5}


def _host(targets, board="x86-host", lowering="tvm"):
    stages = {"16": {"validate_normalize": _stats(0.1), "trunk": _stats(2.0), "noise": _stats(0.2),
                     "head": _stats(5.0), "decompose": _stats(0.05), "sum of stages": _stats(7.35)}}
    return LatencyReport(location="host", where="box (x86_64, 1 thread)", bundle="/b", bundle_digest="d",
                         backends={"trunk": "tvm", "head": "tvm"}, samples=(16,), warmup=1, repeats=5, stages=stages,
                         end_to_end={"16": _stats(7.5, 8.0, 9.0)}, board=board, targets=targets,
                         lowerings={g: lowering for g in targets}, inputs="x")


def _remote(where, location="remote", targets=None):
    notes = ("emulated: not board times",) if location == "emulated" else ()
    return LatencyReport(location=location, where=where, bundle="/b", bundle_digest="d",
                         backends={"trunk": "tvm", "head": "tvm"}, samples=(16,), warmup=1, repeats=5,
                         stages={"16": {"trunk": _stats(3.0), "head": _stats(6.0)}}, board="pi",
                         targets=targets or {}, notes=notes, inputs="y")


def test_profile_table_rows_are_the_reports_figures_with_their_source():
    host = _host({"trunk": "x86-64", "head": "x86-64"})
    rpc = _remote("rpc 127.0.0.1:9090", targets={"trunk": "x86-64", "head": "x86-64"})
    emu = _remote("qemu-aarch64 -cpu cortex-a72", location="emulated")
    t = profile_table([host, rpc, emu], 16, "cmd")
    assert t["command"] == "cmd" and t["provenance"]
    h = dict(zip(t["headers"], t["rows"][0]))
    assert h["measured on"] == "host" and h["graphs"] == "trunk: tvm@x86-64, head: tvm@x86-64"
    assert (h["trunk p50 ms"], h["head p50 ms"], h["sum of stages p50 ms"]) == ("2.000", "5.000", "7.350")
    assert (h["end-to-end p50 ms (S=16)"], h["end-to-end p99 ms (S=16)"]) == ("7.500", "9.000")
    r = dict(zip(t["headers"], t["rows"][1]))
    assert r["measured on"] == "TVM RPC (localhost)" and (r["trunk p50 ms"], r["head p50 ms"]) == ("3.000", "6.000")
    nm = "not measured"
    assert r["validate_normalize p50 ms"] == r["sum of stages p50 ms"] == r["end-to-end p50 ms (S=16)"] == nm
    e = dict(zip(t["headers"], t["rows"][2]))
    assert e["measured on"] == "emulated qemu (not board times)" and e["graphs"] == "trunk: tvm, head: tvm"
    assert source_label(_remote("tracker 10.0.0.2:9190 key pi")) == "TVM RPC"
    with pytest.raises(ValueError, match="S=8"):
        profile_table([host], 8, "cmd")


def test_profile_cell_matches_reports_to_targets_and_says_not_measured():
    tt = _script()
    host = _host({"trunk": "x86-64", "head": "x86-64"})
    rpc = _remote("rpc 127.0.0.1:9090", targets={"trunk": "x86-64", "head": "x86-64"})
    emu = _remote("qemu", location="emulated", targets={"trunk": "cortex-a72", "head": "cortex-a72"})
    reports = [host, rpc, emu]
    assert tt.profile_cell(reports, "x86-64", ["trunk", "head"], 16) == \
        "host: 7.50 ms end to end; TVM RPC (localhost): trunk 3.00 + head 6.00 ms (graphs only)"
    assert tt.profile_cell(reports, "cortex-a72", ["trunk", "head"], 16) == \
        "emulated qemu (not board times): trunk 3.00 + head 6.00 ms (graphs only)"
    assert tt.profile_cell(reports, "cuda-sm87", ["trunk", "head"], 16) == "not measured"
    # a report for a bundle whose head ran elsewhere does not count for the target's head row
    mixed = _host({"trunk": "x86-64", "head": "xc7z020"})
    assert tt.profile_cell([mixed], "x86-64", ["trunk", "head"], 16) == "not measured"
    assert tt.profile_cell([host], "x86-64", ["trunk", "head"], 1) == "not measured"  # no figures at S=1
    # the lowering must match too: an ONNX Runtime bundle on x86-64 is not the TVM x86-64 row
    ort = _host({"trunk": "x86-64", "head": "x86-64"}, lowering="onnxruntime")
    assert tt.profile_cell([ort], "x86-64", ["trunk", "head"], 16, "tvm") == "not measured"
    assert tt.profile_cell([ort, host], "x86-64", ["trunk", "head"], 16, "tvm") == "host: 7.50 ms end to end"


def test_reports_round_trip_through_the_profile_folder(tmp_path):
    tt = _script()
    save_latency_report(_host({"trunk": "x86-64", "head": "x86-64"}), tmp_path / "a", plot=False)
    save_latency_report(_remote("rpc 127.0.0.1:1", targets={"trunk": "x86-64", "head": "x86-64"}), tmp_path / "b",
                        plot=False)
    (tmp_path / "not-a-report").mkdir()
    got = tt.load_profiles(tmp_path)
    assert [r.location for r in got] == ["host", "remote"] and got[0].targets == {"trunk": "x86-64", "head": "x86-64"}
    meta = json.loads((tmp_path / "a" / "latency_report.json").read_text())
    meta["meta"]["stages"]["16"]["trunk"]["median_ms"] = 0.001  # edited by hand: the digest check refuses it
    (tmp_path / "a" / "latency_report.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="(?i)digest|hash|altered|modified"):
        tt.load_profiles(tmp_path)


def test_stored_tables_are_what_the_script_makes_of_the_stored_reports():
    """results/profiles.json and the lowering table's "profiled" column are regenerated here from
    results/profile/*/latency_report.json (hash-verified) and must be identical: not written by hand."""
    tt = _script()
    reports = tt.load_profiles()
    if not reports:
        pytest.fail("no profile reports under results/profile (run `python scripts/target_table.py profile`)")
    locations = {r.location for r in reports}
    assert {"host", "remote"} <= locations
    assert any("127.0.0.1" in r.where for r in reports if r.location == "remote")
    stored = json.loads(tt.PROFILE_JSON.read_text())
    fresh = profile_table(reports, tt.SAMPLES, tt.PROFILE_COMMAND)
    assert stored["headers"] == fresh["headers"] and stored["rows"] == fresh["rows"]
    lowering = json.loads(tt.TABLE_JSON.read_text())
    evidence = json.loads(tt.DEFAULT_JSON.read_text())
    assert lowering["headers"][-1].startswith("profiled")
    want = [tt.profile_cell(reports, r["target"], r["graphs"], evidence["samples"], r["lowering"])
            for r in evidence["rows"]]
    assert [row[-1] for row in lowering["rows"]] == want
    assert any(c != "not measured" for c in want) and any(c == "not measured" for c in want)
