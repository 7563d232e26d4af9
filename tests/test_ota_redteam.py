"""OTA fault suite, part 4: the red-team classes of issue 21 (concurrency, republishing,
lock-outs, trust state, contract checks, hangs and amplification, local corruption).

Every row of ``CASE_TABLE`` names a test below (a check keeps table and tests in step):
the attack or failure, and what must happen. Cases run against the in-memory repository
simulator, a real HTTP server on 127.0.0.1, and the real CLIs (``edgeuq keys|publish``,
``python -m edgeuq_runtime update|status|rollback``) in subprocesses.
"""
from __future__ import annotations

import bz2
import copy
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from ota_support import (BOARD, CANARY_WINDOWS, FAST, MODEL, RepoHTTPServer, RepoSimulator, World, build_world,
                         bundle_files, device_snapshot, expect_refused, fresh_keys, make_bundle, release_meta,
                         tar_of, update, weights, write_tree)

from edgeuq.ota.canaries import add_canaries
from edgeuq.ota.keys import generate_keys, rotate_key
from edgeuq.ota.publish import publish_bundle
from edgeuq.ota.repository import RootRotationError, TufRepository
from edgeuq_runtime import UncertaintyRuntime, sha256_file, write_bundle
from edgeuq_runtime.ota import boot, core, current_bundle, mark_good, record_window, rollback, status
from edgeuq_runtime.ota.archive import pack_bundle, unpack_bundle
from edgeuq_runtime.ota.errors import SlotError, UpdateBusy, UpdateRefused
from edgeuq_runtime.ota.fetchers import HttpFetcher
from tuf.api import exceptions as tuf_ex
from edgeuq_runtime.ota.slots import link_slot, read_state
from edgeuq_runtime.ota.updater import TRUSTED_ROOTS, OtaUpdater, UpdateConfig, provision

RUNTIME = str(Path(__file__).resolve().parents[1] / "runtime")
NO_DELTA = UpdateConfig(attempts=2, healthy_needed=3, threads=1, delta=False)

# (case id = test function, class, attack / failure, expected outcome)
CASE_TABLE = [
    ("test_two_updater_threads_one_waits_out", "concurrency", "two updaters at once (threads, one mid-download)",
     "second refused [busy]; slots end r1 (good) + r2"),
    ("test_two_updater_processes_cli", "concurrency", "two `update` processes at once over HTTP",
     "second exits 2 'another update is running'; known-good r1 kept"),
    ("test_lock_wait_then_proceeds", "concurrency", "second updater with a lock wait", "waits, then runs"),
    ("test_boot_during_update_changes_nothing", "concurrency", "boot while an update holds the lock",
     "serves current, staging untouched"),
    ("test_lock_released_by_killed_holder", "concurrency", "updater killed -9 while holding the lock",
     "next update runs"),
    ("test_served_window_during_update_is_not_blocked", "concurrency",
     "service reports a window while an update holds the lock", "not blocked, not counted ('busy')"),
    ("test_republish_same_bundle_is_noop_cli", "republish", "operator republishes the same bundle (real CLIs)",
     "device: up to date, nothing written"),
    ("test_rejected_stays_rejected_cli", "republish", "second `rollback` after a rollback",
     "exit 2, clear message, rejected release never serves; later update installs"),
    ("test_republished_rejected_bundle_refused", "republish", "rejected bundle republished as a new release",
     "refused [rejected]"),
    ("test_publish_refresh_cli", "republish", "`edgeuq publish --refresh` after the timestamp expired",
     "targets untouched, device refreshes; expiry warnings printed"),
    ("test_root_rotation_without_retired_key_refused_cli", "lock-out", "root rotated, retired root key file missing",
     "publish refuses, repository untouched; with the key back the device updates"),
    ("test_root_rotation_error_names_missing_keys", "lock-out", "sync_keys without the old root's threshold",
     "RootRotationError, repository unchanged"),
    ("test_release_number_jump_refused", "lock-out", "signed release 2**62", "refused [release-step], floor kept"),
    ("test_publisher_refuses_release_jump", "lock-out", "publish --release far above the newest",
     "publish refuses"),
    ("test_first_install_never_marked_good_accepts_updates", "lock-out", "first install never marked good",
     "trial ends (no-fallback), next update installs"),
    ("test_first_install_failing_in_service_no_model_cli", "lock-out", "first install fails on real input",
     "no model, release rejected, fix installs"),
    ("test_status_mark_good_cli", "lock-out", "`status --mark-good` on a first install", "good, floor 1"),
    ("test_rollback_without_previous_slot_cli", "lock-out", "`rollback` on a first install",
     "exit 2, clear message, update still accepted"),
    ("test_factory_install_then_update_and_rollback_cli", "lock-out", "first install from a factory image",
     "confirmed at once; wrong model and a second factory install refused; OTA update + rollback work"),
    ("test_trust_store_survives_lost_tuf_cache", "trust", "tuf/ cache lost, retired root key signs an attack",
     "refused [signature] (reference: without the trust store it installs)"),
    ("test_rotated_root_persisted_even_when_the_refresh_is_refused", "trust",
     "root rotated, then the update refused (expired timestamp)", "refused [expired], root v2 persisted"),
    ("test_targets_resigned_same_version_caught_by_snapshot_hash", "trust",
     "targets-key holder re-signs targets under the same version",
     "refused [metadata-hash] (reference: snapshot without hashes installs it)"),
    ("test_contract_attacks", "contract", "model name / version downgrade / input length / signed-vs-manifest",
     "refused before any slot is written (6 rows)"),
    ("test_http_drip_body_cut_at_deadline", "hang", "server drips the body 1 byte / 0.5 s",
     "refused [download-slow] at the deadline"),
    ("test_http_drip_headers_cut_at_deadline", "hang", "server drips the status line 1 byte / 0.5 s",
     "cut at the deadline"),
    ("test_sparse_tar_refused_before_allocation", "amplification", "10 KB signed sparse tar declaring 2 GiB",
     "refused [archive], < 20 MB traced"),
    ("test_huge_declared_delta_refused_before_patching", "amplification", "400-byte delta declaring 400 MB",
     "refused [delta], < 20 MB traced"),
    ("test_delta_bz2_bomb_refused", "amplification", "delta whose diff block is a bz2 bomb", "refused [delta]"),
    ("test_many_members_linear", "amplification", "20,000 archive members", "refused in well under a second"),
    ("test_archive_member_table", "amplification", "archive member table (x and x/y, sizes, kinds)",
     "refused [archive] (8 rows)"),
    ("test_local_corruption_repaired", "brick", "corrupt state / current / trial record / stray files",
     "repaired from the verified slots, no traceback, known-good kept, next update installs (14 rows)"),
    ("test_manifest_with_file_and_dir_refused", "brick", "signed bundle listing x and x/y",
     "refused [archive], no traceback"),
]


def test_case_table_matches_tests():
    names = {row[0] for row in CASE_TABLE}
    assert len(names) == len(CASE_TABLE)
    missing = [n for n in names if not callable(globals().get(n))]
    assert not missing, missing


def case_count() -> int:
    """Rows, counting the sub-cases of table-driven tests (reported in docs/ota.md)."""
    sub = {"test_contract_attacks": len(CONTRACT_CASES), "test_archive_member_table": len(MEMBER_CASES),
           "test_local_corruption_repaired": len(CORRUPTIONS)}
    return sum(sub.get(row[0], 1) for row in CASE_TABLE)


# -- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("ota-redteam"))


def _digest(bundle: Path) -> str:
    return sha256_file(Path(bundle) / "manifest.json")


def _slot_digests(dev: Path) -> Dict[str, str]:
    return {s: _digest(dev / "slots" / s) for s in ("a", "b") if (dev / "slots" / s / "manifest.json").is_file()}


def _tree_hash(dev: Path) -> str:
    """Hash of everything the device owns except the tuf cache, the lock file and staging."""
    h = hashlib.sha256()
    for p in sorted(dev.rglob("*")):
        rel = p.relative_to(dev).as_posix()
        if rel.startswith(("tuf", "staging")) or rel == "update.lock":
            continue
        h.update(rel.encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEUQ_OTA_")}
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([RUNTIME, str(Path(RUNTIME).parent), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "edgeuq_runtime", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _host(*args: str) -> subprocess.CompletedProcess:
    """`edgeuq keys|publish ...` through the real CLI entry point (in-process: importing torch in a
    subprocess per call costs ~10 s on a loaded 2-core machine)."""
    import contextlib
    from edgeuq.cli import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 2
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def _no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr


def two_slot(world: World, tmp: Path):
    """A device with r1 in slot a and r2 in slot b (current, marked good), floor 2."""
    sim, dev = world.fresh(tmp)
    sim.release(world.bundles["r2"])
    assert update(dev, sim)["release"] == 2
    mark_good(dev)
    return sim, dev


@pytest.fixture(scope="module")
def disk_repo(tmp_path_factory):
    """Real `edgeuq keys generate` + `edgeuq publish` (CLI) of r1 into a directory repository."""
    tmp = tmp_path_factory.mktemp("ota-redteam-disk")
    W, V = weights(0)
    b = {"r1": make_bundle(tmp, "r1", W, V, "1.0"), "r2": make_bundle(tmp, "r2", W, V + 0.02 * weights(1)[1], "1.1"),
         "r3": make_bundle(tmp, "r3", W, V + 0.03 * weights(2)[1], "1.2")}
    r = _host("keys", "generate", str(tmp / "keys"))
    assert r.returncode == 0, r.stderr
    return tmp, b


def _publish(tmp: Path, repo: Path, bundle: Path, *extra: str) -> subprocess.CompletedProcess:
    return _host("publish", str(bundle), "--repo", str(repo), "--keys", str(tmp / "keys"), "--board", BOARD,
                 "--allow-unknown-board", *extra)


def _fresh_disk(disk_repo, tmp_path, keys_copy: bool = False):
    """A private repository (r1 published by the CLI) and device (r1 installed by the CLI, good)."""
    tmp, b = disk_repo
    own = tmp_path / "own"
    own.mkdir()
    shutil.copytree(tmp / "keys", own / "keys")
    repo = own / "repo"
    r = _publish(own, repo, b["r1"])
    assert r.returncode == 0, r.stderr
    dev = own / "dev"
    r = _cli("update", "--root", str(dev), "--repo", repo.as_uri(), "--board", BOARD, "--model", MODEL,
             "--trust-root", str(repo / "metadata" / "1.root.json"), "--healthy", "2")
    assert r.returncode == 0 and "installed release 1" in r.stdout, r.stderr
    return own, repo, dev, b


# -- concurrency ---------------------------------------------------------------------------------------
def test_two_updater_threads_one_waits_out(world, tmp_path):
    sim, dev = world.fresh(tmp_path)
    sim.release(world.bundles["r2"])
    gate, entered = threading.Event(), threading.Event()
    target = sim.url_of(core.bundle_target_path(BOARD, MODEL, 2))
    blob = sim.files[target]

    def held():
        entered.set()
        assert gate.wait(60)
        yield blob
    sim.hooks[target] = held
    out: dict = {}

    def first():
        out["first"] = update(dev, sim, config=NO_DELTA)
    t = threading.Thread(target=first)
    t.start()
    assert entered.wait(60), "first updater never reached its download"
    with pytest.raises(UpdateBusy, match="another update is running") as ei:
        update(dev, sim, config=NO_DELTA)
    assert ei.value.reason == "busy"
    gate.set()
    t.join(60)
    assert out["first"]["status"] == "installed" and out["first"]["release"] == 2
    digests = _slot_digests(dev)
    assert digests == {"a": _digest(world.bundles["r1"]), "b": _digest(world.bundles["r2"])}
    assert link_slot(dev) == "b"


def _lock_held(dev: Path) -> bool:
    try:
        fd = os.open(str(dev / "update.lock"), os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _spawn_update(dev: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEUQ_OTA_")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([RUNTIME, env.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, "-m", "edgeuq_runtime", "update", "--root", str(dev), "--no-delta",
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _http_device(world, tmp_path):
    """A device provisioned against an HTTP server serving the simulator's files (r2 published)."""
    sim, dev = world.fresh(tmp_path)
    sim.release(world.bundles["r2"])
    www = write_tree(sim.files, tmp_path / "www")
    return sim, dev, www


def _point_device_at(dev: Path, url: str) -> None:
    cfg = json.loads((dev / "device.json").read_text())
    cfg["repo_url"] = url
    (dev / "device.json").write_text(json.dumps(cfg))


def test_two_updater_processes_cli(world, tmp_path):
    sim, dev, www = _http_device(world, tmp_path)
    with RepoHTTPServer(www) as srv:
        # the first updater's bundle download is held open until the second one has finished
        srv.behaviour[sim.url_of(core.bundle_target_path(BOARD, MODEL, 2))] = "gate"
        _point_device_at(dev, srv.url)
        a = _spawn_update(dev)
        t0 = time.monotonic()
        while not _lock_held(dev):
            assert a.poll() is None and time.monotonic() - t0 < 120, "first updater never took the lock"
            time.sleep(0.02)
        b = _spawn_update(dev)
        out_b, err_b = b.communicate(timeout=180)
        assert a.poll() is None, "the first updater finished before the second one ran"
        srv.gate.set()
        out_a, err_a = a.communicate(timeout=180)
    assert a.returncode == 0 and "installed release 2" in out_a, err_a
    assert b.returncode == 2 and "another update is running" in err_b, (out_b, err_b)
    assert "Traceback" not in err_b
    assert _slot_digests(dev) == {"a": _digest(world.bundles["r1"]), "b": _digest(world.bundles["r2"])}
    assert read_state(dev)["good"] == "a" and read_state(dev)["floor"] == 1


def test_lock_wait_then_proceeds(world, tmp_path):
    from edgeuq_runtime.ota.slots import update_lock
    sim, dev = world.fresh(tmp_path)
    sim.release(world.bundles["r2"])
    done = threading.Event()

    def hold():
        with update_lock(dev):
            time.sleep(1.0)
        done.set()
    t = threading.Thread(target=hold)
    t.start()
    time.sleep(0.2)
    out = update(dev, sim, config=dataclasses.replace(FAST, lock_wait_s=60.0))
    t.join()
    assert done.is_set() and out["status"] == "installed"


def test_boot_during_update_changes_nothing(world, tmp_path):
    from edgeuq_runtime.ota import slots
    sim, dev = world.fresh(tmp_path)
    (dev / "staging").mkdir()
    (dev / "staging" / "partial").write_bytes(b"x" * 100)
    before = read_state(dev)
    slots.LOCK_WAIT_S, saved = 0.1, slots.LOCK_WAIT_S
    try:
        with slots.update_lock(dev):
            result = threading.Thread  # boot from another thread: the lock is per thread
            got = {}
            th = result(target=lambda: got.update(r=boot(dev)))
            th.start()
            th.join()
    finally:
        slots.LOCK_WAIT_S = saved
    assert got["r"].action == "busy" and got["r"].slot == "a"
    assert (dev / "staging" / "partial").is_file() and read_state(dev) == before


def test_lock_released_by_killed_holder(world, tmp_path):
    sim, dev = world.fresh(tmp_path)
    repo_dir = write_tree(sim.files, tmp_path / "www")
    sim.release(world.bundles["r2"])
    write_tree(sim.files, repo_dir)
    _point_device_at(dev, repo_dir.as_uri())
    child = Path(__file__).with_name("ota_crash_child.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEUQ_OTA_")}
    env.update(OMP_NUM_THREADS="1", EDGEUQ_OTA_CRASH_AT="stage.mkdir")
    r = subprocess.run([sys.executable, str(child), "update", str(dev)], env=env, capture_output=True, timeout=180)
    assert r.returncode == -9, r.stderr
    assert not _lock_held(dev)
    assert (dev / "staging").is_dir()  # what the killed updater left
    out = OtaUpdater(dev, config=FAST).update()
    assert out["status"] == "installed" and out["release"] == 2


# -- republishing, rejected releases, refresh ---------------------------------------------------------
def test_republish_same_bundle_is_noop_cli(disk_repo, tmp_path):
    own, repo, dev, b = _fresh_disk(disk_repo, tmp_path)
    assert _cli("status", "--root", str(dev), "--mark-good").returncode == 0
    r = _publish(own, repo, b["r2"])
    assert r.returncode == 0, r.stderr
    r = _cli("update", "--root", str(dev))
    assert r.returncode == 0 and "installed release 2" in r.stdout, r.stderr
    assert _cli("status", "--root", str(dev), "--mark-good").returncode == 0
    before = _tree_hash(dev)
    r = _publish(own, repo, b["r2"])  # the same bundle again (operator re-signs an expiring repo)
    assert r.returncode == 0 and "published release 3" in r.stdout, r.stderr
    r = _cli("update", "--root", str(dev))
    assert r.returncode == 0 and "same digest" in r.stdout and "nothing written" in r.stdout, (r.stdout, r.stderr)
    assert _tree_hash(dev) == before
    assert _slot_digests(dev) == {"a": _digest(b["r1"]), "b": _digest(b["r2"])}


def test_rejected_stays_rejected_cli(disk_repo, tmp_path):
    own, repo, dev, b = _fresh_disk(disk_repo, tmp_path)
    assert _cli("status", "--root", str(dev), "--mark-good").returncode == 0
    assert _publish(own, repo, b["r2"]).returncode == 0
    assert _cli("update", "--root", str(dev)).returncode == 0
    r = _cli("rollback", "--root", str(dev))
    assert r.returncode == 0 and "slot a" in r.stdout
    before = _tree_hash(dev)
    r = _cli("rollback", "--root", str(dev))  # must not re-activate the release it just rejected
    assert r.returncode == 2 and "rejected before" in r.stderr and "updates are accepted" in r.stderr, r.stderr
    _no_traceback(r)
    assert _tree_hash(dev) == before and current_bundle(dev) == dev / "slots" / "a"
    st = json.loads(_cli("status", "--root", str(dev), "--json").stdout)
    assert st["slots"]["b"]["rejected"] is True and st["current"] == "a"
    assert _publish(own, repo, b["r3"]).returncode == 0
    r = _cli("update", "--root", str(dev))
    assert r.returncode == 0 and "installed release 3" in r.stdout, r.stderr
    assert _slot_digests(dev) == {"a": _digest(b["r1"]), "b": _digest(b["r3"])}


def test_republished_rejected_bundle_refused(world, tmp_path):
    sim, dev = world.fresh(tmp_path)
    sim.release(world.bundles["r2"])
    assert update(dev, sim)["release"] == 2
    rollback(dev, "bad in service")
    sim.release(world.bundles["r2"])  # same bytes, release 3
    expect_refused(dev, sim, {"rejected"})


def test_publish_refresh_cli(disk_repo, tmp_path):
    own, repo, dev, b = _fresh_disk(disk_repo, tmp_path)
    meta = repo / "metadata"
    targets_before = {p.name: p.read_bytes() for p in meta.glob("*.targets.json")}
    # the timestamp has expired: the device refuses the repository ...
    r = _publish(own, repo, b["r2"], "--expire-timestamp", "-1")
    assert r.returncode == 0 and "WARNING" in r.stdout
    targets_after_publish = {p.name: p.read_bytes() for p in meta.glob("*.targets.json")}
    assert _cli("status", "--root", str(dev), "--mark-good").returncode == 0
    r = _cli("update", "--root", str(dev))
    assert r.returncode == 2 and "[expired]" in r.stderr
    # ... until the operator refreshes (only snapshot and timestamp are re-signed)
    r = _host("publish", "--refresh", "--repo", str(repo), "--keys", str(own / "keys"), "--warn-days", "3")
    assert r.returncode == 0, r.stderr
    assert "targets v2 unchanged" in r.stdout
    warned = {ln.split()[0] for ln in r.stdout.splitlines() if "WARNING" in ln}
    assert warned == {"timestamp"}, r.stdout  # 1 day left < 3; snapshot 7, targets 90, root 365
    assert {p.name: p.read_bytes() for p in meta.glob("*.targets.json")} == targets_after_publish
    assert set(targets_before) < set(targets_after_publish)
    snap = json.loads((meta / "timestamp.json").read_text())["signed"]["meta"]["snapshot.json"]
    assert set(snap) == {"version", "length", "hashes"}
    r = _cli("update", "--root", str(dev))
    assert r.returncode == 0 and "installed release 2" in r.stdout, r.stderr


# -- lock-outs ----------------------------------------------------------------------------------------
def test_root_rotation_without_retired_key_refused_cli(disk_repo, tmp_path):
    own, repo, dev, b = _fresh_disk(disk_repo, tmp_path)
    assert _cli("status", "--root", str(dev), "--mark-good").returncode == 0
    assert _host("keys", "rotate", str(own / "keys"), "root").returncode == 0
    index = json.loads((own / "keys" / "keys.json").read_text())
    retired = own / "keys" / index["roles"]["root"]["retired"][0]["file"]
    hidden = own / "retired.pem"
    shutil.move(str(retired), str(hidden))
    ts_before = (repo / "metadata" / "timestamp.json").read_bytes()
    r = _publish(own, repo, b["r2"])
    assert r.returncode != 0 and "root" in r.stderr and "retired" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert (repo / "metadata" / "timestamp.json").read_bytes() == ts_before
    assert not (repo / "metadata" / "2.root.json").exists()
    shutil.move(str(hidden), str(retired))  # key back: rotation works and the device follows it
    r = _publish(own, repo, b["r2"])
    assert r.returncode == 0 and "root v2" in r.stdout, r.stderr
    r = _cli("update", "--root", str(dev))
    assert r.returncode == 0 and "installed release 2" in r.stdout, r.stderr
    assert (dev / TRUSTED_ROOTS / "2.root.json").read_bytes() == (repo / "metadata" / "2.root.json").read_bytes()


def test_root_rotation_error_names_missing_keys(world, tmp_path):
    repo = copy.deepcopy(world.repo)
    before = repo.root.to_bytes()
    new = fresh_keys(tmp_path, "new")
    keys = dataclasses.replace(world.keys, signers={**world.keys.signers, "root": new.signers["root"]},
                               retired_root=())
    with pytest.raises(RootRotationError, match=world.keys.signers["root"][0].public_key.keyid[:12]):
        repo.sync_keys(keys)
    assert repo.root.to_bytes() == before and max(repo.roots) == 1


def test_release_number_jump_refused(world, tmp_path):
    sim, dev = world.fresh(tmp_path)
    b = world.bundles["r2"]
    sim.raw_release(pack_bundle(b), release_meta(b, 2 ** 62))
    expect_refused(dev, sim, {"release-step"})
    assert read_state(dev)["floor"] == 1


def test_publisher_refuses_release_jump(world, tmp_path):
    from edgeuq.ota.publish import add_release
    repo = copy.deepcopy(world.repo)
    with pytest.raises(ValueError, match="more than"):
        add_release(repo, world.bundles["r2"], BOARD, release=2 ** 62)


def _first_install(world, tmp_path, healthy: int = 3):
    sim = RepoSimulator(TufRepository.create(world.keys), world.keys)
    sim.release(world.bundles["r1"])
    dev = tmp_path / "first"
    provision(dev, BOARD, MODEL, "mem://repo", sim.repo.roots[1])
    assert update(dev, sim, config=UpdateConfig(attempts=2, healthy_needed=healthy, threads=1))["release"] == 1
    return sim, dev


def test_first_install_never_marked_good_accepts_updates(world, tmp_path):
    sim, dev = _first_install(world, tmp_path)
    assert [boot(dev).action for _ in range(3)] == ["count", "count", "no-fallback"]
    st = read_state(dev)
    assert st["pending"] is None and st["floor"] == 0 and st["rejected"] == []
    assert boot(dev).action == "run" and boot(dev).slot == "a"
    sim.release(world.bundles["r2"])
    out = update(dev, sim)
    assert out["status"] == "installed" and out["release"] == 2 and link_slot(dev) == "b"


def test_first_install_failing_in_service_no_model_cli(world, tmp_path):
    sim, dev = _first_install(world, tmp_path)
    assert record_window(dev, False) == "no-model"
    assert not os.path.lexists(dev / "current")
    st = read_state(dev)
    assert st["pending"] is None and len(st["rejected"]) == 1
    with pytest.raises(SlotError, match="no model installed"):
        boot(dev)
    r = _cli("status", "--root", str(dev))
    assert r.returncode == 0 and "REJECTED" in r.stdout and "serving:  None" in r.stdout, (r.stdout, r.stderr)
    sim.release(world.bundles["r1"])  # the same bundle republished: still rejected
    with pytest.raises(UpdateRefused, match=r"\[rejected\]"):
        update(dev, sim)
    sim.release(world.bundles["r2"])  # a fix
    out = update(dev, sim)
    assert out["status"] == "installed" and out["release"] == 3
    assert boot(dev).bundle.name == link_slot(dev)


def test_status_mark_good_cli(world, tmp_path):
    _, dev = _first_install(world, tmp_path)
    r = _cli("status", "--root", str(dev), "--mark-good")
    assert r.returncode == 0 and "marked release 1 in slot a good" in r.stdout, (r.stdout, r.stderr)
    st = read_state(dev)
    assert st["pending"] is None and st["good"] == "a" and st["floor"] == 1
    r = _cli("status", "--root", str(dev), "--mark-good")
    assert r.returncode == 0 and "nothing on trial" in r.stdout


def test_rollback_without_previous_slot_cli(world, tmp_path):
    sim, dev = _first_install(world, tmp_path)
    before = _tree_hash(dev)
    r = _cli("rollback", "--root", str(dev))
    assert r.returncode == 2 and "no previous release" in r.stderr and "--mark-good" in r.stderr, r.stderr
    _no_traceback(r)
    assert _tree_hash(dev) == before
    sim.release(world.bundles["r2"])  # the trial has no fallback, so a fix is accepted right away
    assert update(dev, sim)["status"] == "installed"


# -- trust state -----------------------------------------------------------------------------------
def _attack_with_retired_root(world, tmp_path, keep_trust_store: bool):
    import dataclasses as dc
    sim, dev = world.fresh(tmp_path)
    new = fresh_keys(tmp_path, "newroot")
    keys = dc.replace(world.keys, signers={**world.keys.signers, "root": new.signers["root"]},
                      retired_root=world.keys.signers["root"])
    sim.repo.sync_keys(keys)
    sim.keys = keys
    sim.release(world.bundles["r2"])
    assert update(dev, sim)["release"] == 2
    mark_good(dev)
    assert (dev / TRUSTED_ROOTS / "2.root.json").read_bytes() == sim.repo.roots[2]
    # the attacker holds only the retired root key: a root v2' of its own, signed by it
    att_repo = copy.deepcopy(world.repo)  # the repository as it was at root v1
    attacker = dc.replace(world.attacker, retired_root=world.keys.signers["root"])
    att_repo.sync_keys(attacker)
    att = RepoSimulator(att_repo, attacker)
    evil_W, evil_V = weights(7)
    evil = make_bundle(tmp_path, "evil", evil_W, evil_V, "9.0")
    att.release(evil, release=3)
    shutil.rmtree(dev / "tuf")  # the non-fsynced tuf cache is lost (power cut, disk full ...)
    if not keep_trust_store:
        shutil.rmtree(dev / TRUSTED_ROOTS)
    return att, dev, evil


def test_trust_store_survives_lost_tuf_cache(world, tmp_path):
    att, dev, _ = _attack_with_retired_root(world, tmp_path / "t", keep_trust_store=True)
    expect_refused(dev, att, {"signature"})
    # reference: the same attack against a device that bootstraps from the shipped root v1 installs
    att2, dev2, evil = _attack_with_retired_root(world, tmp_path / "ref", keep_trust_store=False)
    out = update(dev2, att2)
    assert out["status"] == "installed" and _digest(current_bundle(dev2)) == _digest(evil)


def test_targets_resigned_same_version_caught_by_snapshot_hash(world, tmp_path):
    def attack(sim, dev, hashes: bool):
        sim.release(world.bundles["r2"])
        if not hashes:  # an old publisher: snapshot names targets by version only
            from tuf.api.metadata import MetaFile
            sim.repo.snapshot.signed.meta["targets.json"] = MetaFile(version=sim.repo.targets.signed.version)
            sim.repo._sign(sim.repo.snapshot, world.keys, "snapshot")
            from edgeuq.ota.repository import _SER
            sbytes = sim.repo.snapshot.to_bytes(_SER)
            sim.repo.timestamp.signed.snapshot_meta = MetaFile(
                version=sim.repo.snapshot.signed.version, length=len(sbytes),
                hashes={"sha256": hashlib.sha256(sbytes).hexdigest()})
            sim.repo._sign(sim.repo.timestamp, world.keys, "timestamp")
            sim.sync()
        # the targets-key holder swaps release 2's bytes and re-signs targets under the same version
        W, V = weights(0)
        other = make_bundle(tmp_path / ("h" if hashes else "n"), "swap", W, V + 0.05 * weights(5)[1], "1.1")
        path = core.bundle_target_path(BOARD, MODEL, 2)
        sim.repo.add_target(path, pack_bundle(other), {core.CUSTOM_KEY: release_meta(other, 2)})
        for p in list(sim.repo.targets.signed.targets):
            if p.startswith("deltas/"):
                del sim.repo.targets.signed.targets[p]
        sim.repo._sign(sim.repo.targets, world.keys, "targets")
        version = sim.repo.targets.signed.version
        sim.files[f"metadata/{version}.targets.json"] = sim.repo.targets.to_bytes()
        sim.files[sim.url_of(path)] = pack_bundle(other)
        return other
    sim, dev = world.fresh(tmp_path / "h")
    attack(sim, dev, hashes=True)
    expect_refused(dev, sim, {"metadata-hash"})
    sim2, dev2 = world.fresh(tmp_path / "n")
    other = attack(sim2, dev2, hashes=False)
    assert update(dev2, sim2)["status"] == "installed" and _digest(current_bundle(dev2)) == _digest(other)


# -- contract ------------------------------------------------------------------------------------------
def _bundle(tmp: Path, name: str, version: str = "1.1", model: str = MODEL, length: int = 16, seed: int = 0):
    from onnx import TensorProto, helper, numpy_helper
    from rt_helpers import _save, make_head, make_manifest
    from edgeuq_runtime import InputSpec

    def make_trunk(path: Path, W: np.ndarray) -> Path:  # rt_helpers' trunk with any input length
        vi = helper.make_tensor_value_info
        return _save([helper.make_node("MatMul", ["signal", "W"], ["features"])], "trunk",
                     [vi("signal", TensorProto.FLOAT, ["B", length])], [vi("features", TensorProto.FLOAT, ["B", 8])],
                     [numpy_helper.from_array(W, "W")], path)
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((length, 8)).astype(np.float32)
    V = 3.0 * rng.standard_normal((8, 3)).astype(np.float32)
    src = tmp / f"{name}-src"
    src.mkdir(parents=True)
    write_bundle(tmp / name, make_manifest(model_name=model, model_version=version,
                                           input=InputSpec(length=length, sample_rate_hz=50.0)),
                 {"trunk.onnx": make_trunk(src / "trunk.onnx", W), "head.onnx": make_head(src / "head.onnx", V)})
    windows = np.random.default_rng(99).standard_normal((6, length)).astype(np.float32)
    add_canaries(tmp / name, windows, seed=0)
    return tmp / name


def _raw(sim, b, release=2, **over):
    sim.raw_release(pack_bundle(b), release_meta(b, release, **over))


CONTRACT_CASES = {
    "other-model-name-signed-as-ours": (lambda w, t, sim: _raw(sim, _bundle(t, "m", model="other-model"),
                                                               model=MODEL), {"contract"}),
    "other-model-name-consistent": (lambda w, t, sim: _raw(sim, _bundle(t, "m2", model="other-model")), {"model"}),
    "model-version-downgrade": (lambda w, t, sim: sim.release(_bundle(t, "old", version="0.9")), {"model-version"}),
    "input-length-change": (lambda w, t, sim: sim.release(_bundle(t, "len32", length=32)), {"input-contract"}),
    "signed-input-differs-from-manifest": (lambda w, t, sim: _raw(sim, _bundle(t, "s"), input={
        "length": 32, "dtype": "float32"}), {"contract"}),
    "signed-manifest-version-differs": (lambda w, t, sim: _raw(sim, _bundle(t, "mv"), manifest_version=2),
                                        {"contract"}),
    "no-signed-contract": (lambda w, t, sim: sim.raw_release(pack_bundle(w.bundles["r2"]), {
        k: v for k, v in release_meta(w.bundles["r2"], 2).items() if k not in ("input", "classes",
                                                                                 "manifest_version")}),
                           {"metadata"}),
}


@pytest.mark.parametrize("name", list(CONTRACT_CASES))
def test_contract_attacks(world, tmp_path, name):
    setup, reasons = CONTRACT_CASES[name]
    sim, dev = world.fresh(tmp_path)
    setup(world, tmp_path, sim)
    before_slots = _tree_hash(dev)
    expect_refused(dev, sim, reasons)
    assert _tree_hash(dev) == before_slots  # nothing written: no slot, no state, no record


# -- hangs ---------------------------------------------------------------------------------------------
def _drip_case(world, tmp_path, mode: str):
    sim, dev, www = _http_device(world, tmp_path)
    target = sim.url_of(core.bundle_target_path(BOARD, MODEL, 2))
    fetcher = HttpFetcher(connect_timeout=2.0, read_timeout=2.0, deadline_s=2.5)
    with RepoHTTPServer(www) as srv:
        srv.behaviour[target] = mode
        t0 = time.monotonic()
        with pytest.raises(Exception) as ei:
            list(fetcher._fetch(f"{srv.url}/{target}"))
        took = time.monotonic() - t0
        # the wall-clock deadline (DeadlineExceeded, a SlowRetrievalError that is never resumed), not a read timeout
        assert type(ei.value).__name__ == "DeadlineExceeded" and isinstance(ei.value, tuf_ex.SlowRetrievalError), \
            ei.value
        assert 2.4 <= took <= 6.0, took  # cut at the 2.5 s deadline (read timeout 2 s never fires; the drip
        # would last hours); the upper bound leaves room for a loaded 2-core machine
        t0 = time.monotonic()
        expect_refused(dev, fetcher, {"download-slow"}, repo_url=srv.url, config=NO_DELTA)
        return time.monotonic() - t0


def test_http_drip_body_cut_at_deadline(world, tmp_path):
    took = _drip_case(world, tmp_path, "drip")
    assert took < 30, took  # metadata + one 2.5 s cut (generous for a loaded 2-core machine)


def test_http_drip_headers_cut_at_deadline(world, tmp_path):
    _drip_case(world, tmp_path, "drip-headers")


# -- amplification -----------------------------------------------------------------------------------
def _sparse_tar(world) -> bytes:
    files = bundle_files(world.bundles["r2"])

    def sparse(tar):
        info = tarfile.TarInfo("big.bin")
        info.size = 10
        info.pax_headers = {"GNU.sparse.size": str(1 << 31), "GNU.sparse.map": "0,10", "GNU.sparse.name": "big.bin"}
        tar.addfile(info, io.BytesIO(b"x" * 10))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for n, d in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            tar.addfile(ti, io.BytesIO(d))
        sparse(tar)
    return buf.getvalue()


def test_sparse_tar_refused_before_allocation(world, tmp_path):
    data = _sparse_tar(world)
    with tarfile.open(fileobj=io.BytesIO(data)) as t:  # the attack is real: tarfile would expand it to 2 GiB
        assert t.getmember("big.bin").size == 1 << 31 and t.getmember("big.bin").issparse()
    tracemalloc.start()
    with pytest.raises(UpdateRefused, match=r"\[archive\]"):
        unpack_bundle(data)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 << 20, peak
    sim, dev = world.fresh(tmp_path)
    sim.raw_release(data, release_meta(world.bundles["r2"], 2))
    expect_refused(dev, sim, {"archive"})


def _patch_header(control: bytes, diff: bytes, extra: bytes, out: int) -> bytes:
    import bsdiff4.core as bc
    c, d, e = bz2.compress(control), bz2.compress(diff), bz2.compress(extra)
    return core.DELTA_MAGIC + bc.encode_int64(len(c)) + bc.encode_int64(len(d)) + bc.encode_int64(out) + c + d + e


def _swap_delta(world, tmp_path, patch: bytes):
    sim, dev = world.fresh(tmp_path)
    sim.release(world.bundles["r2"])
    dpath = core.delta_target_path(BOARD, MODEL, 1, 2)
    tf = sim.repo.targets.signed.targets[dpath]
    sim.repo.add_target(dpath, patch, dict(tf.unrecognized_fields["custom"]))
    sim.publish()
    return sim, dev


def test_huge_declared_delta_refused_before_patching(world, tmp_path):
    import bsdiff4.core as bc
    patch = _patch_header(bc.encode_int64(0) * 3, b"", b"", 400_000_000)
    assert len(patch) < 400
    from edgeuq_runtime.ota.updater import bounded_patch
    base = pack_bundle(world.bundles["r1"])
    tracemalloc.start()
    with pytest.raises(UpdateRefused, match=r"\[delta\].*400000000"):
        bounded_patch(base, patch, len(pack_bundle(world.bundles["r2"])))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 << 20, peak
    sim, dev = _swap_delta(world, tmp_path, patch)
    expect_refused(dev, sim, {"delta"})


def test_delta_bz2_bomb_refused(world, tmp_path):
    import bsdiff4.core as bc
    n = len(pack_bundle(world.bundles["r2"]))
    patch = _patch_header(bc.encode_int64(n) + bc.encode_int64(0) * 2, b"\0" * (8 << 20), b"", n)
    assert len(patch) < 4096
    sim, dev = _swap_delta(world, tmp_path, patch)
    err = expect_refused(dev, sim, {"delta"})
    assert "expands beyond" in str(err)


def test_many_members_linear(world):
    members = [("manifest.json", "file", 10)] + [(f"d{i % 100}/f{i}", "file", 1) for i in range(20_000)]
    t0 = time.perf_counter()
    names = core.check_archive_members(members, max_total=1 << 30)
    took = time.perf_counter() - t0
    assert len(names) == 20_001 and took < 1.0, took
    files = {"manifest.json": bundle_files(world.bundles["r2"])["manifest.json"]}
    files.update({f"f{i}": b"" for i in range(20_000)})
    data = tar_of(files)
    t0 = time.perf_counter()
    unpacked = unpack_bundle(data)
    assert len(unpacked) == 20_001 and time.perf_counter() - t0 < 10.0
    dup = members + [("d5/f5", "file", 1)]
    with pytest.raises(UpdateRefused, match="appears twice"):
        core.check_archive_members(dup, max_total=1 << 30)


MEMBER_CASES = {
    "file-and-dir": [("manifest.json", "file", 1), ("x", "file", 1), ("x/y", "file", 1)],
    "dir-then-file": [("manifest.json", "file", 1), ("x/y/z", "file", 1), ("x/y", "file", 1)],
    "sparse": [("manifest.json", "file", 1), ("big", "sparse", 10)],
    "pax": [("manifest.json", "file", 1), ("p", "pax", 1)],
    "sizes-above-archive": [("manifest.json", "file", 60), ("a", "file", 60)],
    "negative-size": [("manifest.json", "file", 1), ("a", "file", -5)],
    "nul-in-name": [("manifest.json", "file", 1), ("a\0b", "file", 1)],
    "duplicate": [("manifest.json", "file", 1), ("a", "file", 1), ("a", "file", 1)],
}


@pytest.mark.parametrize("name", list(MEMBER_CASES))
def test_archive_member_table(name):
    with pytest.raises(UpdateRefused, match=r"\[archive\]"):
        core.check_archive_members(MEMBER_CASES[name], max_total=100)


def test_manifest_with_file_and_dir_refused(world, tmp_path):
    files = bundle_files(world.bundles["r2"])
    m = json.loads(files["manifest.json"])
    m["files"]["x"] = core.sha256_bytes(b"1")
    m["files"]["x/y"] = core.sha256_bytes(b"2")
    files["manifest.json"] = json.dumps(m).encode()
    files["x"], files["x/y"] = b"1", b"2"
    sim, dev = world.fresh(tmp_path)
    sim.raw_release(tar_of(files), release_meta(world.bundles["r2"], 2,
                                               manifest_sha256=core.sha256_bytes(files["manifest.json"])))
    expect_refused(dev, sim, {"archive"})


# -- local corruption ------------------------------------------------------------------------------
def _write(p: Path, data: bytes) -> None:
    p.write_bytes(data)


def _state_edit(fn):
    def go(dev: Path) -> None:
        st = json.loads((dev / "state.json").read_text())
        fn(st)
        (dev / "state.json").write_text(json.dumps(st))
    return go


def _relink(target: str):
    def go(dev: Path) -> None:
        (dev / "current").unlink()
        os.symlink(target, dev / "current")
    return go


def _current_file(dev: Path) -> None:
    (dev / "current").unlink()
    (dev / "current").write_text("slots/b\n")


def _current_dir(dev: Path) -> None:
    (dev / "current").unlink()
    (dev / "current").mkdir()
    (dev / "current" / "junk").write_text("x")


def _state_dir(dev: Path) -> None:
    (dev / "state.json").unlink()
    (dev / "state.json").mkdir()


# name -> (corrupt, the bundle that must serve after boot: "r2" or "r1")
CORRUPTIONS = {
    "state-truncated": (lambda d: _write(d / "state.json", (d / "state.json").read_bytes()[:37]), "r2"),
    "state-garbage-bytes": (lambda d: _write(d / "state.json", b"\xff\xfe\x00garbage"), "r2"),
    "state-is-a-list": (lambda d: _write(d / "state.json", b"[1, 2, 3]"), "r2"),
    "state-missing": (lambda d: (d / "state.json").unlink(), "r2"),
    "state-is-a-directory": (_state_dir, "r2"),
    "trial-record-garbage": (_state_edit(lambda s: s.update(pending="xyz")), "r2"),
    "trial-record-bad-fields": (_state_edit(lambda s: s.update(pending={"slot": "b", "previous": "q",
                                                                        "attempts_left": "lots"})), "r2"),
    "rejected-garbage": (_state_edit(lambda s: s.update(rejected=[1, None, "zz"])), "r2"),
    "current-regular-file": (_current_file, "r2"),
    "current-a-directory": (_current_dir, "r2"),
    "current-to-missing-slot": (lambda d: shutil.rmtree(d / "slots" / "b") or None, "r1"),
    "current-points-outside": (_relink("../../etc"), "r2"),
    "file-at-slot-tmp-and-staging": (lambda d: (_write(d / "slots" / "a.tmp", b"x"), _write(d / "staging", b"y"),
                                                _write(d / "slots" / "zz", b"z")), "r2"),
    "slot-b-is-a-file": (lambda d: (shutil.rmtree(d / "slots" / "b"), _write(d / "slots" / "b", b"f")), "r1"),
}


@pytest.fixture(scope="module")
def two_slot_template(world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-slot")
    sim, dev = two_slot(world, tmp)
    return sim, dev


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_local_corruption_repaired(world, two_slot_template, tmp_path, name):
    from edgeuq_runtime.__main__ import main as device_main
    tsim, tdev = two_slot_template
    dev = tmp_path / "dev"
    shutil.copytree(tdev, dev, symlinks=True)
    sim = RepoSimulator(copy.deepcopy(tsim.repo), world.keys)
    sim.files = dict(tsim.files)
    corrupt, serves = CORRUPTIONS[name]
    corrupt(dev)
    # read-only views never crash on a corrupt device
    assert device_main(["status", "--root", str(dev)]) == 0
    assert _digest(current_bundle(dev)) == _digest(world.bundles[serves])
    started = boot(dev)
    assert _digest(started.bundle) == _digest(world.bundles[serves])
    UncertaintyRuntime(started.bundle, threads=1).predict(CANARY_WINDOWS, seed=0)
    st = read_state(dev)
    assert (dev / "current").is_symlink() and link_slot(dev) == started.slot
    assert st["floor"] >= (2 if serves == "r2" else 1)  # the anti-rollback floor is never lowered
    assert not (dev / "staging").exists() and {p.name for p in (dev / "slots").iterdir()} <= {"a", "b"}
    # and the device takes the next update, keeping the known-good release
    sim.release(world.bundles["r3"])
    out = update(dev, sim)
    assert out["status"] == "installed" and out["release"] == 3
    assert _digest(world.bundles[serves]) in _slot_digests(dev).values()


def test_served_window_during_update_is_not_blocked(world, tmp_path):
    """A first install on trial keeps serving while an update (that may replace it) holds the lock."""
    from edgeuq_runtime.ota import slots
    _, dev = _first_install(world, tmp_path)
    got = {}
    with slots.update_lock(dev):
        th = threading.Thread(target=lambda: got.update(r=record_window(dev, True), t=time.monotonic()))
        t0 = time.monotonic()
        th.start()
        th.join()
    assert got["r"] == "busy" and got["t"] - t0 < 5.0
    assert read_state(dev)["pending"]["healthy"] == 0
    assert record_window(dev, True) == "pending" and read_state(dev)["pending"]["healthy"] == 1


def test_rotated_root_persisted_even_when_the_refresh_is_refused(world, tmp_path):
    """Root v2 is verified, then the timestamp has expired: the update is refused, yet v2 is in
    the trust store (a lost tuf cache cannot hand trust back to the retired root key)."""
    sim, dev = world.fresh(tmp_path)
    new = fresh_keys(tmp_path, "newroot")
    keys = dataclasses.replace(world.keys, signers={**world.keys.signers, "root": new.signers["root"]},
                               retired_root=world.keys.signers["root"])
    sim.repo.sync_keys(keys)
    sim.keys = keys
    sim.release(world.bundles["r2"])
    sim.publish(timestamp=-1.0)
    expect_refused(dev, sim, {"expired"})
    assert (dev / TRUSTED_ROOTS / "2.root.json").read_bytes() == sim.repo.roots[2]


def test_factory_install_then_update_and_rollback_cli(disk_repo, tmp_path):
    """First-install path: a factory image is confirmed from the start, so the first OTA
    release already has a fallback."""
    tmp, b = disk_repo
    own = tmp_path / "own"
    own.mkdir()
    shutil.copytree(tmp / "keys", own / "keys")
    repo = own / "repo"
    assert _publish(own, repo, b["r1"]).returncode == 0
    dev = own / "dev"
    common = ["--root", str(dev), "--repo", repo.as_uri(), "--board", BOARD, "--trust-root",
              str(repo / "metadata" / "1.root.json")]
    r = _cli("factory-install", *common, "--model", "other-model", "--bundle", str(b["r1"]), "--release", "1")
    assert r.returncode == 2 and "this device runs 'other-model'" in r.stderr, r.stderr
    assert not dev.exists()  # nothing stored for a refused factory image
    r = _cli("factory-install", *common, "--model", MODEL, "--bundle", str(b["r1"]), "--release", "1")
    assert r.returncode == 0 and "marked good" in r.stdout, r.stderr
    st = read_state(dev)
    assert st["good"] == "a" and st["floor"] == 1 and st["pending"] is None
    r = _cli("factory-install", *common, "--model", MODEL, "--bundle", str(b["r1"]), "--release", "1")
    assert r.returncode == 2 and "already has a model" in r.stderr
    r = _cli("update", "--root", str(dev))  # release 1 is the factory bundle itself: nothing to do
    assert r.returncode == 0 and "up to date" in r.stdout, (r.stdout, r.stderr)
    assert _publish(own, repo, b["r2"]).returncode == 0
    r = _cli("update", "--root", str(dev))
    assert r.returncode == 0 and "installed release 2" in r.stdout and "via delta" in r.stdout, (r.stdout, r.stderr)
    r = _cli("rollback", "--root", str(dev))
    assert r.returncode == 0 and "slot a" in r.stdout
    assert _digest(boot(dev).bundle) == _digest(b["r1"])
