"""LatencyReport: round trip, hashing (metadata and plots), refusals, plots written."""
from __future__ import annotations

import json

import pytest

from edgeuq.artifact import ArtifactError
from edgeuq.profile import LatencyStats
from edgeuq.profile.report import LatencyReport, load_latency_report, samples_table, save_latency_report, \
    stage_table, targets_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _stats(*ms):
    return LatencyStats.from_samples(list(ms)).to_dict()


def make_report(location="host", notes=()):
    stages = {str(s): {"validate_normalize": _stats(0.1, 0.2, 0.1), "trunk": _stats(1.0, 1.1, 1.2),
                       "noise": _stats(0.05 * s, 0.06 * s), "head": _stats(0.5 * s, 0.6 * s, 0.7 * s),
                       "decompose": _stats(0.1, 0.1)} for s in (1, 8)}
    return LatencyReport(location=location, where="test-machine", bundle="/b", bundle_digest="d" * 64,
                         backends={"trunk": "tvm", "head": "tvm"}, samples=(1, 8), warmup=2, repeats=3,
                         stages=stages, end_to_end={"1": _stats(2.0, 2.1), "8": _stats(6.0, 6.5)},
                         operators={"head": ({"name": "matmul", "op": "kernel", "calls_per_run": 1.0,
                                              "us_per_run": 12.5, "median_us": 12.0, "share": 1.0},)},
                         operator_sources={"head": "hand"}, board="x86-host", notes=tuple(notes), inputs="abc")


def test_round_trip_keeps_every_field_and_hashes_the_plots(tmp_path):
    saved = save_latency_report(make_report(), tmp_path / "r")
    assert saved.plots == ("stages.png", "latency_vs_samples.png")
    for name in saved.plots:
        data = (tmp_path / "r" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000
    again = load_latency_report(tmp_path / "r")
    assert again == saved and again.digest == saved.digest and len(saved.digest) == 64
    assert again.stages["8"]["head"]["median_ms"] == pytest.approx(4.8)
    assert again.end_to_end["8"]["p90_ms"] == pytest.approx(6.5)
    assert again.operators["head"][0]["us_per_run"] == 12.5 and again.inputs == "abc"
    assert set(again.files) == {"stages.png", "latency_vs_samples.png"}
    # tables come out in inference order, with the end-to-end row
    _, rows = stage_table(again, samples=1)
    assert [r[1] for r in rows] == ["validate_normalize", "trunk", "noise", "head", "decompose",
                                    "end-to-end (predict)"]
    heads, rows = samples_table(again)
    assert heads[1] == "validate_normalize ms" and rows[1][-1] == "6.250"  # median of 6.0 and 6.5


def test_edited_metadata_and_altered_plots_are_refused(tmp_path):
    save_latency_report(make_report(), tmp_path / "r")
    env = tmp_path / "r" / LatencyReport.META_FILE
    d = json.loads(env.read_text())
    d["meta"]["stages"]["1"]["trunk"]["median_ms"] = 0.001  # a nicer number, digest left alone
    env.write_text(json.dumps(d))
    with pytest.raises(ArtifactError, match="digest"):
        load_latency_report(tmp_path / "r")
    save_latency_report(make_report(), tmp_path / "s")
    with open(tmp_path / "s" / "stages.png", "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="stages.png"):
        load_latency_report(tmp_path / "s")


def test_location_is_required_and_emulated_must_say_so():
    with pytest.raises(ArtifactError, match="location"):
        make_report(location="board")
    with pytest.raises(ArtifactError, match="not board times"):
        make_report(location="emulated")
    r = make_report(location="emulated", notes=("qemu-aarch64: not board times",))
    assert "not board times" in r.measured_where
    assert make_report(location="remote").measured_where.startswith("remote (TVM RPC)")


def test_inconsistent_statistics_are_refused():
    bad = dict(_stats(1.0, 2.0))
    bad["p90_ms"] = float("nan")
    with pytest.raises(ArtifactError, match="p90_ms"):
        LatencyReport(location="host", where="x", bundle="/b", bundle_digest="", backends={}, samples=(1,),
                      warmup=0, repeats=2, stages={"1": {"trunk": bad}})
    swapped = dict(_stats(1.0, 2.0, 3.0))
    swapped["median_ms"], swapped["p99_ms"] = swapped["p99_ms"], swapped["median_ms"]
    with pytest.raises(ArtifactError, match="min <= median"):
        LatencyReport(location="host", where="x", bundle="/b", bundle_digest="", backends={}, samples=(1,),
                      warmup=0, repeats=3, stages={"1": {"trunk": swapped}})
    with pytest.raises(ArtifactError, match="not among samples"):
        LatencyReport(location="host", where="x", bundle="/b", bundle_digest="", backends={}, samples=(1,),
                      warmup=0, repeats=2, stages={"4": {"trunk": _stats(1.0, 2.0)}})


def test_targets_table_rows_come_from_the_reports_and_say_not_measured():
    host = make_report()
    remote = LatencyReport(location="remote", where="rpc 127.0.0.1:9090", bundle="/b", bundle_digest="",
                           backends={"trunk": "tvm", "head": "tvm"}, samples=(8,), warmup=1, repeats=3,
                           stages={"8": {"trunk": _stats(3.0, 4.0, 5.0), "head": _stats(7.0, 9.0)}}, board="pi4")
    t = targets_table([host, remote], samples=8)
    assert set(t) >= {"command", "provenance", "headers", "rows"}
    h, r = t["rows"]
    assert h[0] == "x86-host" and h[3] == "1.100" and h[4] == "4.800" and h[5] == "6.250" and h[6] == "6.500"
    assert r[0] == "pi4" and r[1].startswith("remote (TVM RPC)") and r[3] == "4.000" and r[4] == "8.000"
    assert r[5] == r[6] == "not measured"
    assert "remote rpc 127.0.0.1:9090" in t["provenance"]
    with pytest.raises(ValueError, match="S=4"):
        targets_table([host], samples=4)


def test_targets_side_by_side_plot(tmp_path):
    from edgeuq.profile.plots import plot_targets

    out = plot_targets([make_report(), make_report(location="remote")], tmp_path / "targets.png", samples=8)
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000
