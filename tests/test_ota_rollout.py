"""Staged rollouts: the signed rollout target, the device's deterministic membership, health
reports to a collector (HTTP on 127.0.0.1 and a file drop), the automatic halt, and a fleet of
100 simulated devices (in-process, each with its own device root and A/B slots on disk, real
`OtaUpdater` over a file:// repository) through a staged rollout of a release that passes its
canaries but abstains on almost every window in service."""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from ota_support import BOARD, MODEL, make_bundle, weights

from edgeuq.ota import rollout as R
from edgeuq.ota.keys import generate_keys
from edgeuq.ota.publish import publish_bundle
from edgeuq_runtime import sha256_file
from edgeuq_runtime.ota import current_bundle, mark_good
from edgeuq_runtime.ota.errors import UpdateRefused
from edgeuq_runtime.ota.health import HealthMeter, HealthPolicy, canary_report, running_release, send_report
from edgeuq_runtime.ota.rollout import RolloutSpec, bucket, in_rollout, parse_rollout, set_rollout_identity
from edgeuq_runtime.ota.serve import open_runtime, serve_window
from edgeuq_runtime.ota.slots import read_state
from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig, provision

CFG = UpdateConfig(attempts=3, healthy_needed=3, threads=1)
HEALTH = HealthPolicy(abstain_confidence=0.5, ood_epistemic=None)
POLICY = R.RolloutPolicy(max_abstain_increase=0.10, min_devices=5, min_windows=60)
FLEET = 100
SHA_A, SHA_B = "a" * 64, "b" * 64


# -- the device rule ----------------------------------------------------------------------------------
def _ref_bucket(device_id: str, sha: str) -> float:
    """Independent reference: the documented formula written out again."""
    digest = hashlib.sha256(device_id.encode() + b"\x00" + sha.encode()).hexdigest()
    return int(digest[:16], 16) * 100.0 / 2 ** 64


def test_bucket_is_the_documented_hash_uniform_and_monotone_in_percent():
    ids = [f"dev-{i:04d}" for i in range(2000)]
    b = [bucket(d, SHA_A) for d in ids]
    assert all(abs(x - _ref_bucket(d, SHA_A)) < 1e-9 for x, d in zip(b, ids))
    assert all(0 <= x < 100 for x in b)
    counts = np.histogram(b, bins=10, range=(0, 100))[0]
    assert counts.min() > 150 and counts.max() < 250, counts  # ~200 per decile
    spec = lambda p: RolloutSpec(release=2, sha256=SHA_A, percent=p)  # noqa: E731
    members = {p: {d for d in ids if in_rollout(spec(p), d)} for p in (0, 10, 50, 100)}
    assert members[0] == set() and members[100] == set(ids)
    assert members[10] <= members[50], "raising the percentage never drops a device"
    assert abs(len(members[10]) - 200) < 60
    # another release digest samples another set of devices
    other = {d for d in ids if in_rollout(RolloutSpec(release=2, sha256=SHA_B, percent=10), d)}
    assert len(other & members[10]) < 60


def test_identity_is_created_once_and_a_damaged_one_is_replaced_loudly(tmp_path):
    from edgeuq_runtime.ota.rollout import IDENTITY_FILE, rollout_identity

    first = rollout_identity(tmp_path)
    assert rollout_identity(tmp_path) == first and len(first[0]) == 32
    set_rollout_identity(tmp_path, "dev-7", ["canary"])
    assert rollout_identity(tmp_path) == ("dev-7", ("canary",))
    (tmp_path / IDENTITY_FILE).write_text('{"device_id": ')
    with pytest.warns(RuntimeWarning, match="unreadable"):
        new = rollout_identity(tmp_path)
    assert new[0] not in ("dev-7", first[0]) and rollout_identity(tmp_path) == new


def test_groups_and_halt():
    spec = RolloutSpec(release=2, sha256=SHA_A, percent=100, groups=("canary",))
    assert in_rollout(spec, "x", ["canary", "lab"]) and not in_rollout(spec, "x", ["field"])
    assert not in_rollout(RolloutSpec(release=2, sha256=SHA_A, percent=100, halted=True), "x")


@pytest.mark.parametrize("obj,match", [
    (b"not json", "not JSON"),
    ({"release": 2, "percent": 5}, "needs keys"),
    ({"release": 2, "sha256": SHA_A, "percent": 101}, r"percent must be a number in \[0, 100\]"),
    ({"release": 2, "sha256": SHA_A, "percent": float("nan")}, "percent must be"),
    ({"release": 2, "sha256": SHA_A, "percent": True}, "percent must be"),
    ({"release": "2", "sha256": SHA_A, "percent": 5}, "release must be an integer"),
    ({"release": 2, "sha256": "XYZ", "percent": 5}, "sha256 must be"),
    ({"release": 2, "sha256": SHA_A, "percent": 5, "groups": "canary"}, "groups must be a list"),
    ({"release": 2, "sha256": SHA_A, "percent": 5, "halted": "yes"}, "halted must be"),
    ({"release": 2, "sha256": SHA_A, "percent": 5, "stages": [5, 200]}, r"stages\[\] must be"),
    ({"release": 2, "sha256": SHA_A, "percent": 5, "everyone": True}, "unknown keys"),
])
def test_rollout_file_is_validated(obj, match):
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    with pytest.raises(UpdateRefused, match=match) as ei:
        parse_rollout(data)
    assert ei.value.reason == "rollout"


# -- the verdict ----------------------------------------------------------------------------------------
def _rep(dev, sha, windows, abstained, ood=0, errors=0, phase="service", t=1.0):
    return {"schema": 1, "device_id": dev, "release": 1, "sha256": sha, "phase": phase, "windows": windows,
            "abstained": abstained, "ood": ood, "errors": errors, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "time": t}


SPEC = RolloutSpec(release=2, sha256=SHA_B, percent=10, previous={"release": 1, "sha256": SHA_A})


@pytest.mark.parametrize("new,old,action,reason", [
    # 5 new devices x 20 windows; 10 old devices x 20 windows (hand-computed rates)
    ([(20, 4)] * 5, [(20, 3)] * 10, "continue", None),                 # 0.20 vs 0.15: +0.05 <= 0.10
    ([(20, 6)] * 5, [(20, 3)] * 10, "halt", "abstention rate 0.300"),   # +0.15 > 0.10
    ([(20, 2)] * 4, [(20, 3)] * 10, "wait", "not enough data"),        # 4 devices < 5
    ([(10, 2)] * 5, [(20, 3)] * 10, "wait", "not enough data"),        # 50 windows < 60
])
def test_verdict_table(new, old, action, reason):
    reps = [_rep(f"n{i}", SHA_B, w, a) for i, (w, a) in enumerate(new)]
    reps += [_rep(f"o{i}", SHA_A, w, a) for i, (w, a) in enumerate(old)]
    v = R.evaluate(reps, SPEC, POLICY)
    assert v.action == action, v
    if reason:
        assert reason in " ".join(v.reasons)
    assert v.new.windows == sum(w for w, _ in new) and v.old.abstained == sum(a for _, a in old)


def test_verdict_ood_errors_and_cumulative_reports():
    reps = [_rep(f"n{i}", SHA_B, 20, 0, ood=5) for i in range(5)] + [_rep(f"o{i}", SHA_A, 20, 0) for i in range(5)]
    assert "OOD rate 0.250" in R.evaluate(reps, SPEC, POLICY).reasons[0]
    reps = [_rep(f"n{i}", SHA_B, 20, 0, errors=1) for i in range(5)] + [_rep(f"o{i}", SHA_A, 20, 0) for i in range(5)]
    assert "error rate 0.050" in R.evaluate(reps, SPEC, POLICY).reasons[0]
    # a device's newest cumulative report replaces its older one (not added to it)
    reps = [_rep("n0", SHA_B, 20, 20, t=1.0), _rep("n0", SHA_B, 200, 20, t=2.0)]
    assert R.aggregate(reps, lambda r: True).windows == 200


def test_reports_over_http_and_file_drop(tmp_path):
    meter = HealthMeter(HEALTH)

    class Res:
        confidence = np.array([0.9, 0.3, float("nan"), 0.8])
        epistemic = np.zeros(4)
        input_flags = ("", "", "", "flat")
    meter.observe(Res(), latency_ms=8.0)
    meter.error()
    rep = meter.report("dev-1", 1, SHA_A)
    assert (rep["windows"], rep["abstained"], rep["ood"], rep["errors"]) == (4, 2, 1, 1)  # NaN abstains
    assert rep["latency_p50_ms"] == 2.0
    calls = []
    with R.Collector(tmp_path / "drop", on_report=lambda: calls.append(1)) as c:
        send_report(rep, c.url)
        bad = urllib.request.Request(c.url, data=b'{"schema": 1}', method="POST")
        with pytest.raises(urllib.error.HTTPError) as ei:
            urllib.request.urlopen(bad, timeout=5)
        assert ei.value.code == 400
    assert c.accepted == 1 and calls == [1] and "device_id" in c.refused[0]
    send_report(rep, str(tmp_path / "drop"))
    (tmp_path / "drop" / "junk.json").write_text("{")
    reports, problems = R.read_reports(tmp_path / "drop")
    assert len(reports) == 2 and len(problems) == 1 and problems[0].startswith("junk.json")


# -- the fleet -----------------------------------------------------------------------------------------
class Fleet:
    def __init__(self, tmp: Path) -> None:
        W, V = weights(0)
        self.tmp = tmp
        self.keys, self.repo = tmp / "keys", tmp / "repo"
        self.b1 = make_bundle(tmp, "r1", W, V, "1.0")
        # the bad release: its head weights were lost in export (scaled to ~0): near-uniform
        # probabilities, so it abstains on almost every window -- but it reproduces its own
        # canaries (computed from this very bundle) and gives finite outputs (marked good in service)
        self.bad = make_bundle(tmp, "bad", W, 1e-3 * weights(7)[1], "1.1")
        self.good = make_bundle(tmp, "good", W, V + 0.02 * weights(1)[1], "1.1")
        generate_keys(self.keys)
        publish_bundle(self.b1, self.repo, self.keys, BOARD)
        template = tmp / "template"
        provision(template, BOARD, MODEL, self.repo.as_uri(), (self.repo / "metadata" / "1.root.json").read_bytes())
        assert OtaUpdater(template, config=CFG).update()["release"] == 1
        mark_good(template)
        self.template = template
        self.digest = {n: sha256_file(b / "manifest.json") for n, b in
                       (("r1", self.b1), ("bad", self.bad), ("good", self.good))}

    def devices(self, dest: Path):
        repo_copy = dest / "repo"
        shutil.copytree(self.repo, repo_copy)
        devs = []
        for i in range(FLEET):
            d = dest / f"dev-{i:03d}"
            shutil.copytree(self.template, d, symlinks=True)
            dev_json = json.loads((d / "device.json").read_text())
            dev_json["repo_url"] = repo_copy.as_uri()
            (d / "device.json").write_text(json.dumps(dev_json))
            set_rollout_identity(d, f"dev-{i:03d}")
            devs.append(d)
        return repo_copy, devs


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    return Fleet(tmp_path_factory.mktemp("fleet"))


def _serve_and_report(dev: Path, i: int, url: str) -> dict:
    """Three batches of 8 windows in service (each recorded: 3 healthy calls mark a trial good)."""
    rt, _ = open_runtime(dev, threads=1)
    meter = HealthMeter(HEALTH)
    rng = np.random.default_rng(1000 + i)
    for _ in range(3):
        x = rng.standard_normal((8, 16)).astype(np.float32)
        t0 = time.perf_counter()
        res = serve_window(dev, rt, x)
        meter.observe(res, (time.perf_counter() - t0) * 1e3)
    release, sha = running_release(dev)
    rep = meter.report(dev.name, release, sha)
    send_report(rep, url)
    return rep


def _serving(dev: Path) -> str:
    return sha256_file(current_bundle(dev) / "manifest.json")


def test_fleet_bad_release_halts_itself_after_the_first_stage(fleet, tmp_path, record_property):
    t_start = time.perf_counter()
    repo, devs = fleet.devices(tmp_path)
    drop = tmp_path / "reports"
    with R.Collector(drop) as col:
        for i, d in enumerate(devs):  # baseline: every device in service on r1
            _serve_and_report(d, i, col.url)
        res, spec = R.publish_staged(fleet.bad, repo, fleet.keys, BOARD, percent=10, stages=(10, 50, 100))
        assert (spec.release, spec.percent, spec.previous["release"]) == (2, 10.0, 1)
        col.on_report = lambda: R.auto_evaluate(repo, fleet.keys, BOARD, MODEL, drop, POLICY)
        expected = {d.name for d in devs if _ref_bucket(d.name, spec.sha256) < 10}
        outcomes = {d.name: OtaUpdater(d, config=CFG).update() for d in devs}
        updated = {n for n, o in outcomes.items() if o["status"] == "installed"}
        assert updated == expected, "exactly the devices of the first stage installed"
        assert 3 <= len(updated) <= 20
        assert {o["status"] for n, o in outcomes.items() if n not in updated} == {"not-in-rollout"}
        assert max(o["bytes"] for n, o in outcomes.items() if n not in updated) < res.full_bytes, \
            "devices outside the stage downloaded metadata only"
        for i, d in enumerate(devs):
            if d.name in updated:
                release, sha = running_release(d)
                send_report(canary_report(d.name, outcomes[d.name], sha), col.url)
                rep = _serve_and_report(d, i, col.url)
                assert rep["release"] == 2 and rep["abstained"] >= 0.9 * rep["windows"]
                assert read_state(d)["pending"] is None, "the bad release looked healthy to the device itself"
        assert not col.callback_errors, col.callback_errors
    st = R.status(repo, BOARD, MODEL, drop, POLICY)
    assert st["rollout"]["halted"] and st["rollout"]["percent"] == 0, "the collector halted the rollout itself"
    v = st["verdict"]
    assert v["action"] == "halt" and "abstention rate" in v["reasons"][0]
    assert v["new"]["devices"] == len(updated) and v["old"]["devices"] == FLEET  # baseline: all on r1
    assert st["canary"]["devices"] == len(updated) and st["canary"]["errors"] == 0, "canaries passed everywhere"
    with pytest.raises(R.RolloutError, match="halted"):
        R.promote(repo, fleet.keys, BOARD, MODEL)
    # next poll: the updated devices roll back, nobody else moves; a further poll changes nothing
    second = {d.name: OtaUpdater(d, config=CFG).update() for d in devs}
    assert {n for n, o in second.items() if o["status"] == "rolled-back"} == updated
    third = {d.name: OtaUpdater(d, config=CFG).update()["status"] for d in devs}
    assert set(third.values()) == {"not-in-rollout"}
    for d in devs:
        assert _serving(d) == fleet.digest["r1"], f"{d.name} is not back on the known-good release"
        if d.name in updated:
            assert spec.sha256 in read_state(d)["rejected"]
    elapsed = time.perf_counter() - t_start
    # read by scripts/ota_goals.py (every assertion above held when these are recorded)
    record_property("fleet_devices", len(devs))
    record_property("stage1_updated", len(updated))
    record_property("halted_automatically", int(st["rollout"]["halted"]))
    record_property("rolled_back_to_known_good", len(updated))
    print(f"\nfleet: {FLEET} devices, stage 1 = {len(updated)} updated, halted automatically ({v['reasons'][0]}), "
          f"{len(updated)} rolled back, {elapsed:.1f} s")


def test_fleet_good_release_is_promoted_through_every_stage(fleet, tmp_path):
    """The control: a healthy release is never halted and reaches all 100 devices by promotion."""
    repo, devs = fleet.devices(tmp_path)
    drop = tmp_path / "reports"
    with R.Collector(drop) as col:
        for i, d in enumerate(devs):
            _serve_and_report(d, i, col.url)
        _, spec = R.publish_staged(fleet.good, repo, fleet.keys, BOARD, percent=10, stages=(10, 50))
        col.on_report = lambda: R.auto_evaluate(repo, fleet.keys, BOARD, MODEL, drop, POLICY)
        counts = []
        for stage in range(3):
            for i, d in enumerate(devs):
                if OtaUpdater(d, config=CFG).update()["status"] == "installed":
                    _serve_and_report(d, i, col.url)
            counts.append(sum(_serving(d) == fleet.digest["good"] for d in devs))
            st = R.status(repo, BOARD, MODEL, drop, POLICY)
            assert not st["rollout"]["halted"] and st["verdict"]["action"] in ("continue", "wait"), st["verdict"]
            if stage < 2:
                R.promote(repo, fleet.keys, BOARD, MODEL)
        assert not col.callback_errors, col.callback_errors
    pct = [p for p in (10, 50, 100)]
    expect = [sum(_ref_bucket(d.name, spec.sha256) < p for d in devs) for p in pct]
    assert counts == expect and counts[-1] == FLEET
    assert st["rollout"]["percent"] == 100


def test_halt_of_a_first_install_keeps_serving_and_device_cli_reports_it(fleet, tmp_path):
    import os
    import subprocess
    import sys

    repo = tmp_path / "repo"
    shutil.copytree(fleet.repo, repo)
    dev = tmp_path / "dev"
    provision(dev, BOARD, MODEL, repo.as_uri(), (repo / "metadata" / "1.root.json").read_bytes())
    set_rollout_identity(dev, "first-one")
    _, spec = R.publish_staged(fleet.bad, repo, fleet.keys, BOARD, percent=100)
    assert OtaUpdater(dev, config=CFG).update()["status"] == "installed"
    mark_good(dev)
    R.halt(repo, fleet.keys, BOARD, MODEL)
    out = OtaUpdater(dev, config=CFG).update()
    assert out["status"] == "halted-no-fallback" and "no previous release" in out["detail"]
    assert _serving(dev) == fleet.digest["bad"], "nothing else to serve: it keeps serving"
    # the device CLI prints a rollout outcome instead of failing on it
    other = tmp_path / "other"
    shutil.copytree(fleet.template, other, symlinks=True)
    dj = json.loads((other / "device.json").read_text())
    dj["repo_url"] = repo.as_uri()
    (other / "device.json").write_text(json.dumps(dj))
    runtime = str(Path(__file__).resolve().parents[1] / "runtime")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([runtime, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "edgeuq_runtime", "update", "--root", str(other)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("not-in-rollout: release 1"), (r.stdout, r.stderr)


def test_cli_rollout_status_promote_halt(fleet, tmp_path, capsys):
    from edgeuq.cli import main as edgeuq_main

    repo = tmp_path / "repo"
    shutil.copytree(fleet.repo, repo)
    base = ["--repo", str(repo), "--board", BOARD, "--model", MODEL]
    assert edgeuq_main(["rollout", "status", *base]) == 0
    assert "none for this release" in capsys.readouterr().out
    assert edgeuq_main(["publish", str(fleet.good), "--repo", str(repo), "--keys", str(fleet.keys), "--board", BOARD,
                        "--allow-unknown-board", "--rollout-percent", "5", "--rollout-stages", "5,25"]) == 0
    assert "staged rollout: 5 % of devices, stages [5.0, 25.0]" in capsys.readouterr().out
    assert edgeuq_main(["rollout", "status", *base]) == 0
    assert "rollout of release 2" in capsys.readouterr().out
    (tmp_path / "reports").mkdir()
    assert edgeuq_main(["rollout", "evaluate", *base, "--keys", str(fleet.keys), "--reports",
                        str(tmp_path / "reports")]) == 0
    assert "verdict: wait" in capsys.readouterr().out
    assert edgeuq_main(["rollout", "status", *base, "--reports", str(tmp_path / "reports")]) == 0
    out = capsys.readouterr().out
    assert "canaries on the new release: 0 devices" in out and "verdict: wait" in out
    assert edgeuq_main(["rollout", "promote", *base, "--keys", str(fleet.keys)]) == 0
    assert "25 %" in capsys.readouterr().out
    assert edgeuq_main(["rollout", "promote", *base, "--keys", str(fleet.keys)]) == 0
    assert "100 %" in capsys.readouterr().out
    assert edgeuq_main(["rollout", "halt", *base, "--keys", str(fleet.keys)]) == 0
    assert "HALTED" in capsys.readouterr().out
    assert edgeuq_main(["rollout", "status", *base, "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["rollout"]["halted"] and st["applies"]
    assert edgeuq_main(["rollout", "promote", *base, "--keys", str(fleet.keys)]) != 0
    assert "halted" in capsys.readouterr().err
