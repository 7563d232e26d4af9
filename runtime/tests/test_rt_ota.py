"""Device-only OTA pieces without tuf or the host package: the pure core's rules, the
archive round trip, and the A/B slot state machine on tiny bundles."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeuq_runtime import load_bundle, sha256_file
from edgeuq_runtime.ota import boot, core, current_bundle, mark_good, record_window, rollback
from edgeuq_runtime.ota.archive import pack_bundle, unpack_bundle
from edgeuq_runtime.ota.errors import SlotError, UpdateRefused
from edgeuq_runtime.ota.slots import commit, link_slot, read_state, write_slot

DEV = core.DeviceIdentity("board-a", "tiny-har")


def _meta(**over):
    m = {"board": "board-a", "model": "tiny-har", "model_version": "1.1", "release": 2, "runtime_abi": 1,
         "canary_sha256": "a" * 64, "manifest_sha256": "b" * 64}
    m.update(over)
    return {core.CUSTOM_KEY: m}


def _check(custom, floor=1, rejected=(), path=None):
    return core.check_release(path or core.bundle_target_path("board-a", "tiny-har", 2), 100, {"sha256": "c" * 64},
                              custom, DEV, floor, rejected)


@pytest.mark.parametrize("over,reason", [
    ({"board": "board-b"}, "board"), ({"model": "other"}, "model"), ({"runtime_abi": 2}, "abi"),
    ({"runtime_abi": "1"}, "metadata"), ({"release": 1}, "floor"), ({"release": True}, "metadata"),
    ({"canary_sha256": "xyz"}, "metadata"), ({"model_version": ""}, "metadata"),
])
def test_release_rules(over, reason):
    rel = over.get("release", 2)
    n = rel if type(rel) is int else 2  # the path always names the release, so only the rule under test fails
    with pytest.raises(UpdateRefused) as ei:
        _check(_meta(**over), path=core.bundle_target_path("board-a", "tiny-har", n))
    assert ei.value.reason == reason


def test_release_accepted_and_blacklist():
    rel = _check(_meta())
    assert rel.release == 2 and rel.sha256 == "c" * 64
    with pytest.raises(UpdateRefused, match=r"\[rejected\]"):
        _check(_meta(), rejected=["c" * 64])
    with pytest.raises(UpdateRefused, match=r"\[metadata\]"):
        _check(_meta(), path=core.bundle_target_path("board-a", "tiny-har", 3))


@pytest.mark.parametrize("members", [
    [("manifest.json", "file", 1), ("../x", "file", 1)], [("manifest.json", "file", 1), ("/x", "file", 1)],
    [("manifest.json", "file", 1), ("a/./b", "file", 1)], [("manifest.json", "file", 1), ("l", "other", 0)],
    [("manifest.json", "file", 1), ("manifest.json", "file", 1)], [("x", "file", 1)],
    [("manifest.json", "file", 10), ("b", "file", 10)],
])
def test_archive_member_rules(members):
    with pytest.raises(UpdateRefused, match=r"\[archive\]"):
        core.check_archive_members(members, max_total=15)


def test_archive_round_trip_is_deterministic(tiny):
    a, b = pack_bundle(tiny.dir), pack_bundle(tiny.dir)
    assert a == b
    files = unpack_bundle(a)
    assert sorted(files) == sorted(["manifest.json", *tiny.manifest.files])
    for name, data in files.items():
        assert core.sha256_bytes(data) == sha256_file(tiny.dir / name)


def _install(dev: Path, bundle: Path, release: int) -> str:
    slot = write_slot(dev, unpack_bundle(pack_bundle(bundle)))
    commit(dev, slot, {"release": release, "sha256": core.sha256_bytes(pack_bundle(bundle))}, attempts=2,
           healthy_needed=2)
    return slot


def test_slots_trial_mark_good_rollback(build_bundle, tmp_path):
    b1 = build_bundle("b1").dir
    b2 = build_bundle("b2", model_version="2.0").dir
    dev = tmp_path / "dev"
    with pytest.raises(SlotError):
        current_bundle(dev)
    assert _install(dev, b1, 1) == "a"
    assert record_window(dev, True) == "pending" and record_window(dev, True) == "good"
    assert read_state(dev)["floor"] == 1
    assert _install(dev, b2, 2) == "b" and link_slot(dev) == "b"
    assert boot(dev).action == "count"
    assert current_bundle(dev) == dev / "slots" / "b"
    res = rollback(dev)
    assert res.slot == "a" and link_slot(dev) == "a"
    st = read_state(dev)
    assert st["pending"] is None and len(st["rejected"]) == 1 and st["floor"] == 1
    assert load_bundle(current_bundle(dev)).manifest.model_version == "1.0.0"


def test_stale_pending_record_is_dropped(build_bundle, tmp_path):
    """A pending record whose flip never happened (crash between the two) is ignored at boot."""
    b1 = build_bundle("b1").dir
    dev = tmp_path / "dev"
    _install(dev, b1, 1)
    mark_good(dev)
    st = read_state(dev)
    st["pending"] = {"slot": "b", "previous": "a", "release": 2, "attempts_left": 2, "healthy": 0,
                     "healthy_needed": 2}
    (dev / "state.json").write_text(json.dumps(st))
    assert current_bundle(dev) == dev / "slots" / "a"
    assert boot(dev).action == "clear-stale" and read_state(dev)["pending"] is None


def test_serving_marks_a_trial_good_after_healthy_windows(build_bundle, tmp_path, windows):
    from edgeuq_runtime.ota.serve import open_runtime, serve_window
    b1 = build_bundle("b1").dir
    b2 = build_bundle("b2", model_version="2.0").dir
    dev = tmp_path / "dev"
    _install(dev, b1, 1)
    mark_good(dev)
    _install(dev, b2, 2)
    rt, started = open_runtime(dev, threads=1)
    assert started.action == "count" and started.slot == "b"
    serve_window(dev, rt, windows, seed=0)
    assert read_state(dev)["pending"]["healthy"] == 1
    serve_window(dev, rt, windows, seed=0)
    st = read_state(dev)
    assert st["pending"] is None and st["good"] == "b" and st["floor"] == 2


def test_serving_rolls_back_on_a_backend_failure_not_on_bad_input(build_bundle, tmp_path):
    from edgeuq_runtime import BackendError, InputError
    from edgeuq_runtime.ota.serve import open_runtime, serve_window
    b1, b2 = build_bundle("b1").dir, build_bundle("b2", model_version="2.0").dir
    dev = tmp_path / "dev"
    _install(dev, b1, 1)
    mark_good(dev)
    _install(dev, b2, 2)
    rt, _ = open_runtime(dev, threads=1)
    with pytest.raises(InputError):  # a NaN from the sensor is not the model's fault
        serve_window(dev, rt, [[float("nan")] * 16])
    assert link_slot(dev) == "b" and read_state(dev)["pending"]["healthy"] == 0

    def broken(*a, **k):
        raise BackendError("head graph failed")
    rt.predict = broken  # the model (not the input) fails in service
    with pytest.raises(BackendError):
        serve_window(dev, rt, [[0.0] * 16])
    assert link_slot(dev) == "a" and read_state(dev)["pending"] is None
