"""OTA fault suite, part 3: kill -9 at every write point of an install, a rollback and a
mark-good. The child process SIGKILLs itself at the named point (EDGEUQ_OTA_CRASH_AT, read
by the installer; no write is mocked). After each crash the device boots, serves a
complete verified bundle, the committed release is never lost, and the update can finish.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ota_support import BOARD, MODEL, UncertaintyRuntime, CANARY_WINDOWS, make_bundle, weights

from edgeuq.ota.keys import generate_keys
from edgeuq.ota.publish import publish_bundle
from edgeuq_runtime import load_bundle, sha256_file
from edgeuq_runtime.ota import boot, mark_good, record_window
from edgeuq_runtime.ota.slots import SLOTS, read_state
from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig, provision

CHILD = Path(__file__).with_name("ota_crash_child.py")
CFG = UpdateConfig(attempts=2, healthy_needed=2, threads=1)


def _run(op: str, dev: Path, **env: str) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if not k.startswith("EDGEUQ_OTA_")}
    e.update(env, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(CHILD), op, str(dev)], env=e, capture_output=True, text=True,
                          timeout=120)


def _digest(bundle: Path) -> str:
    return sha256_file(bundle / "manifest.json")


class Fleet:
    """Repository with r1..r3; template devices: `good` (r2 committed and good, r1 previous,
    r3 published but not installed) and `trial` (r3 installed, on trial)."""

    def __init__(self, tmp: Path) -> None:
        W, V = weights(0)
        self.b = {n: make_bundle(tmp, n, W, V + 0.02 * i * weights(i)[1], f"1.{i}") for i, n in
                  enumerate(["r1", "r2", "r3"], start=0)}
        self.digest = {n: _digest(p) for n, p in self.b.items()}
        keys, repo = tmp / "keys", tmp / "repo"
        generate_keys(keys)
        publish_bundle(self.b["r1"], repo, keys, BOARD)
        self.good = tmp / "good"
        provision(self.good, BOARD, MODEL, repo.as_uri(), (repo / "metadata" / "1.root.json").read_bytes())
        assert OtaUpdater(self.good, config=CFG).update()["release"] == 1
        mark_good(self.good)
        publish_bundle(self.b["r2"], repo, keys, BOARD)
        assert OtaUpdater(self.good, config=CFG).update()["release"] == 2
        mark_good(self.good)
        publish_bundle(self.b["r3"], repo, keys, BOARD)
        self.trial = tmp / "trial"
        shutil.copytree(self.good, self.trial, symlinks=True)
        assert OtaUpdater(self.trial, config=CFG).update()["release"] == 3

    def points(self, op: str, template: Path, tmp: Path) -> list:
        dev = tmp / f"probe-{op}"
        shutil.copytree(template, dev, symlinks=True)
        log = tmp / f"points-{op}.txt"
        r = _run(op, dev, EDGEUQ_OTA_CRASH_LOG=str(log))
        assert r.returncode == 0, r.stderr
        return list(dict.fromkeys(log.read_text().split()))  # a point crashes at its first pass


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Fleet:
    return Fleet(tmp_path_factory.mktemp("ota-crash"))


@pytest.fixture(scope="module")
def install_points(fleet, tmp_path_factory):
    return fleet.points("update", fleet.good, tmp_path_factory.mktemp("pts"))


def test_install_has_at_least_20_write_points(install_points):
    assert len(install_points) >= 20, install_points
    assert len(set(install_points)) == len(install_points)
    for needed in ("slot.file[head.onnx].written", "slot.renamed", "commit.pending.state-replaced",
                   "commit.flip.replaced"):
        assert needed in install_points


def _check_after_crash(fleet: Fleet, dev: Path, allowed: set) -> str:
    res = boot(dev)  # what the runtime does at start-up
    bundle = load_bundle(res.bundle, verify=True)
    served = _digest(bundle.root)
    assert served in {fleet.digest[n] for n in allowed}, f"serving an unexpected bundle after the crash"
    rt = UncertaintyRuntime(res.bundle, threads=1)
    assert rt.predict(CANARY_WINDOWS, seed=0).probs.shape == (len(CANARY_WINDOWS), 3)
    # the committed (marked good) release r2 is never lost
    slots = {_digest(dev / "slots" / s) for s in SLOTS
             if (dev / "slots" / s / "manifest.json").is_file() and _verified(dev / "slots" / s)}
    assert fleet.digest["r2"] in slots, "the committed release was lost"
    return next(n for n in allowed if fleet.digest[n] == served)


def _verified(p: Path) -> bool:
    try:
        load_bundle(p, verify=True)
        return True
    except Exception:
        return False


def test_kill9_at_every_install_write_point(fleet, install_points, tmp_path):
    flip = install_points.index("commit.flip.replaced")
    served_count = {"r2": 0, "r3": 0}
    for i, point in enumerate(install_points):
        dev = tmp_path / f"d{i}"
        shutil.copytree(fleet.good, dev, symlinks=True)
        r = _run("update", dev, EDGEUQ_OTA_CRASH_AT=point)
        assert r.returncode == -signal.SIGKILL, f"{point}: child did not die at the point ({r.returncode}) {r.stderr}"
        served = _check_after_crash(fleet, dev, {"r2", "r3"})
        assert served == ("r2" if i < flip else "r3"), f"{point}: served {served}"
        served_count[served] += 1
        # the interrupted update can be completed: install again, or the new release is on trial
        if served == "r2":
            assert OtaUpdater(dev, config=CFG).update()["release"] == 3, point
        assert read_state(dev)["pending"]["release"] == 3, point
        assert record_window(dev, True) == "pending" and record_window(dev, True) == "good"
        assert _digest(boot(dev).bundle) == fleet.digest["r3"]
    assert served_count["r2"] >= 10 and served_count["r3"] >= 3


@pytest.mark.parametrize("op", ["rollback", "service"])
def test_kill9_during_rollback_and_mark_good(fleet, tmp_path, op):
    points = fleet.points(op, fleet.trial, tmp_path)
    assert len(points) >= 4
    for i, point in enumerate(points):
        dev = tmp_path / f"d{i}"
        shutil.copytree(fleet.trial, dev, symlinks=True)
        r = _run(op, dev, EDGEUQ_OTA_CRASH_AT=point)
        assert r.returncode == -signal.SIGKILL, f"{point}: {r.returncode} {r.stderr}"
        _check_after_crash(fleet, dev, {"r2", "r3"})
        state = read_state(dev)
        if op == "rollback" and "rollback-mark.state-replaced" in " ".join(points[:i + 1]):
            # the rollback was recorded before the flip: the trial release never serves again
            assert _digest(boot(dev).bundle) == fleet.digest["r2"], point
            assert state["pending"] is None or state["pending"]["attempts_left"] == 0


def test_trial_rolls_back_automatically_when_never_marked_good(fleet, tmp_path):
    dev = tmp_path / "d"
    shutil.copytree(fleet.trial, dev, symlinks=True)
    served = [_digest(boot(dev).bundle) for _ in range(3)]  # attempts=2: two trial boots, then rollback
    assert served == [fleet.digest["r3"], fleet.digest["r3"], fleet.digest["r2"]]
    state = read_state(dev)
    assert state["pending"] is None and state["floor"] == 2 and len(state["rejected"]) == 1


def test_unhealthy_window_rolls_back_and_corrupt_slot_falls_back(fleet, tmp_path):
    dev = tmp_path / "d"
    shutil.copytree(fleet.trial, dev, symlinks=True)
    assert record_window(dev, False) == "rolled-back"
    assert _digest(boot(dev).bundle) == fleet.digest["r2"]
    dev2 = tmp_path / "d2"
    shutil.copytree(fleet.trial, dev2, symlinks=True)
    head = dev2 / "slots" / "a" / "head.onnx"  # r3's slot (the trial) is corrupted on disk
    head.write_bytes(head.read_bytes()[:-10] + b"0123456789")
    res = boot(dev2)
    assert _digest(res.bundle) == fleet.digest["r2"] and res.action == "rollback"
