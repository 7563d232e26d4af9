"""`edgeuq profile --tracker --key --all`: every free board of a key profiled once (a real tracker
and real `tvm.exec.rpc_server`s on 127.0.0.1, started and stopped here), one report each, and
a summary table whose spread and outlier flags match a hand computation; a qemu-aarch64 server
on the same tracker gives a report labelled emulated, never a board time."""
from __future__ import annotations

import json

import pytest
import torch
from require_extras import require_extra

require_extra("tvm", "tvm")

from rpc_farm import Farm  # noqa: E402

from edgeuq.cli import main  # noqa: E402
from edgeuq.export import export_onnx  # noqa: E402
from edgeuq.lower.compile import compile_board  # noqa: E402
from edgeuq.models import ModelConfig, SignalTransformer  # noqa: E402
from edgeuq.profile.fleet import fleet_table  # noqa: E402
from edgeuq.profile.report import LatencyReport  # noqa: E402
from edgeuq.training import save_checkpoint  # noqa: E402

TINY = dict(input_length=128, num_classes=3, patch=16, d_model=16, heads=2, depth=2, ffn=16, stochastic_blocks=(1,))
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def onnx_art(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fleet")
    return export_onnx(save_checkpoint(SignalTransformer(ModelConfig(**TINY)).eval(), root / "ck", ("a", "b", "c"),
                                       12000.0), root / "onnx")


@pytest.fixture(scope="module")
def farm():
    with Farm() as f:
        f.add_servers("edgeuq-fleet", 2, wait=False)  # they start while the bundle compiles
        yield f


def test_fleet_profile_reaches_every_free_board_once(onnx_art, farm, tmp_path, capsys):
    bundle = compile_board("x86-host", onnx_art, tmp_path / "bundle", samples=4, tuning_root=tmp_path / "db",
                           placement="default", isa_variants=()).bundle.root
    ports = farm.server_ports["edgeuq-fleet"]
    farm.wait_free("edgeuq-fleet", 2)
    rc = main(["profile", "--bundle", str(bundle), "--tracker", farm.tracker_addr, "--key", "edgeuq-fleet", "--all",
               "--samples", "2", "--repeats", "5", "--warmup", "1", "--no-plots", "--out", str(tmp_path / "fleet")])
    assert rc == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "fleet" / "fleet_summary.json").read_text())
    # one report per board, each board (the ports started above) exactly once
    dirs = sorted(p for p in (tmp_path / "fleet").iterdir() if p.is_dir())
    assert len(dirs) == 2
    reports = [LatencyReport.load(d) for d in dirs]
    servers = sorted(r.where.rsplit("server ", 1)[1] for r in reports)
    assert servers == sorted(f"127.0.0.1:{p}" for p in ports)
    assert all(r.location == "remote" and set(r.stages["2"]) == {"trunk", "head"} for r in reports)
    assert summary["spread"]["boards"] == 2 and summary["spread"]["emulated"] == 0
    # the spread is the min / max of the reports' own trunk + head medians
    g = sorted(r.stages["2"]["trunk"]["median_ms"] + r.stages["2"]["head"]["median_ms"] for r in reports)
    sp = summary["spread"]["graphs p50 ms"]
    assert abs(sp["min"] - g[0]) <= 1e-9 and abs(sp["max"] - g[1]) <= 1e-9
    assert "spread of graphs p50 ms (2 boards)" in out
    # the boards are free again afterwards (sessions closed)
    farm.wait_free("edgeuq-fleet", 2)
    # --all without --key is refused
    assert main(["profile", "--bundle", str(bundle), "--all", "--out", str(tmp_path / "x")]) == 2
    assert "--all needs --tracker HOST:PORT and --key KEY" in capsys.readouterr().err


def _report(location: str, trunk: float, head: float) -> LatencyReport:
    st = lambda m: {"median_ms": m, "p90_ms": m * 1.1, "p99_ms": m * 1.2, "min_ms": m * 0.9, "mean_ms": m,  # noqa
                    "repeats": 5}
    notes = ("emulated: x; times are not board times",) if location == "emulated" else ()
    return LatencyReport(location=location, where="w", bundle="b", bundle_digest="d", backends={}, samples=(4,),
                         warmup=1, repeats=5, stages={"4": {"trunk": st(trunk), "head": st(head)}}, notes=notes)


def test_fleet_table_flags_outliers_and_leaves_emulated_out_of_the_spread():
    reps = [_report("remote", 1.0, 9.0), _report("remote", 1.0, 10.0), _report("remote", 2.0, 9.5),
            _report("remote", 5.0, 25.0), _report("emulated", 100.0, 900.0)]
    servers = ["a:1", "b:2", "c:3", "d:4", "qemu:5"]
    t = fleet_table(reps, servers, 4, outlier_ratio=1.5)
    flags = {row[0]: row[-1] for row in t["rows"][:5]}
    # graphs p50: 10, 11, 11.5, 30 -> d is 30 / median(10, 11, 11.5) = 2.7x: flagged; the others are not
    assert flags["d:4"].startswith("OUTLIER") and t["spread"]["outliers"] == ["d:4"]
    assert all(flags[s] == "" for s in ("a:1", "b:2", "c:3"))
    assert flags["qemu:5"].startswith("emulated")
    sp = t["spread"]["graphs p50 ms"]
    assert (sp["min"], sp["median"], sp["max"]) == (10.0, 11.25, 30.0)
    assert t["spread"]["boards"] == 4 and t["spread"]["emulated"] == 1
    # a tighter ratio flags more; a ratio <= 1 is refused
    assert "a:1" in fleet_table(reps, servers, 4, outlier_ratio=1.05)["spread"]["outliers"]
    with pytest.raises(ValueError, match="outlier_ratio"):
        fleet_table(reps, servers, 4, outlier_ratio=1.0)


def test_a_qemu_server_on_the_tracker_is_labelled_emulated(onnx_art, farm, tmp_path):
    """A qemu-aarch64 RPC server registered with the same tracker (its own key): the fleet profile
    reaches it, labels its report emulated and keeps it out of the board spread."""
    from test_profile_emulated import _need_sysroot

    from edgeuq.profile.emulated import EmulatedServer
    from edgeuq.profile.fleet import profile_fleet

    _need_sysroot()
    bundle = compile_board("raspberry-pi-4", onnx_art, tmp_path / "pi", samples=4,
                           tuning_root=tmp_path / "db").bundle.root
    with EmulatedServer("cortex-a72", tracker=("127.0.0.1", farm.tracker_port), key="edgeuq-fleet-a72"):
        farm.wait_free("edgeuq-fleet-a72", 1)
        fleet = profile_fleet(bundle, tmp_path / "fleet", tracker=farm.tracker_addr, key="edgeuq-fleet-a72",
                              samples=(2,), warmup=1, repeats=3, plot=False, expect=1)
    (rep,) = fleet.reports
    assert rep.location == "emulated" and "qemu-aarch64 -cpu cortex-a72" in rep.where
    assert any("not board times" in n for n in rep.notes) and set(rep.stages["2"]) == {"trunk", "head"}
    assert fleet.table["spread"]["boards"] == 0 and fleet.table["spread"]["emulated"] == 1
    assert fleet.table["rows"][0][-1].startswith("emulated: not a board time")
    assert "graphs p50 ms" not in fleet.table["spread"]  # no board time, no spread
