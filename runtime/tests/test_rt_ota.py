"""Device-only OTA pieces without tuf or the host package: the pure core's rules, the
archive round trip, and the A/B slot state machine on tiny bundles."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from rt_helpers import require_extra

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


# -- issue 21: the pure core's new rules, table-driven ------------------------------------------------
@pytest.mark.parametrize("release,floor,reason", [
    (2, 1, None), (1 + core.MAX_RELEASE_STEP, 1, None), (2 + core.MAX_RELEASE_STEP, 1, "release-step"),
    (2 ** 62, 1, "release-step"), (core.MAX_RELEASE_STEP, 0, None), (core.MAX_RELEASE_STEP + 1, 0, "release-step"),
    (5, 5, "floor"),
])
def test_release_step_table(release, floor, reason):
    path = core.bundle_target_path("board-a", "tiny-har", release)
    call = lambda: core.check_release(path, 100, {"sha256": "c" * 64}, _meta(release=release), DEV, floor)  # noqa
    if reason is None:
        assert call().release == release
    else:
        with pytest.raises(UpdateRefused) as ei:
            call()
        assert ei.value.reason == reason


def test_rejected_matches_archive_or_manifest_digest():
    for bad in ("c" * 64, "b" * 64):  # the archive sha256, the manifest digest
        with pytest.raises(UpdateRefused, match=r"\[rejected\]"):
            _check(_meta(), rejected=[bad])


_CONTRACT = {"model": "tiny-har", "model_version": "1.2", "manifest_version": 1,
             "input": {"length": 16, "dtype": "float32"}, "classes": 3}


def _c(**over):
    return {**_CONTRACT, **over}


@pytest.mark.parametrize("signed,bundle,running,reason", [
    (_c(), _c(), _c(model_version="1.1"), None),
    (_c(), _c(), None, None),                                                   # first install
    (_c(), _c(), _c(), None),                                                   # same version: allowed
    (_c(), _c(), _c(model_version="1.2.0"), None),                              # 1.2 == 1.2.0
    (None, _c(), _c(), "metadata"),                                             # unsigned contract
    (_c(), _c(model="other"), _c(), "contract"),                                # manifest lies about the model
    (_c(model="other"), _c(model="other"), None, "model"),                      # not this device's model
    (_c(), _c(model_version="1.3"), _c(), "contract"),                          # signed 1.2, manifest 1.3
    (_c(input={"length": 32, "dtype": "float32"}), _c(), _c(), "contract"),     # signed input differs
    (_c(manifest_version=2), _c(), _c(), "contract"),
    (_c(classes=4), _c(), _c(), "contract"),
    (_c(model_version="0.9"), _c(model_version="0.9"), _c(), "model-version"),  # downgrade
    (_c(model_version="1.10"), _c(model_version="1.10"), _c(model_version="1.9"), None),  # numeric, not string order
    (_c(model_version="beta"), _c(model_version="beta"), _c(), "model-version"),  # cannot be ordered
    (_c(input={"length": 32, "dtype": "float32"}), _c(input={"length": 32, "dtype": "float32"}), _c(),
     "input-contract"),
    (_c(input={"length": 16, "dtype": "int64"}), _c(input={"length": 16, "dtype": "int64"}), _c(), "input-contract"),
    (_c(classes=4), _c(classes=4), _c(), "input-contract"),
])
def test_contract_table(signed, bundle, running, reason):
    if reason is None:
        core.check_contract(signed, bundle, running, DEV)
        return
    with pytest.raises(UpdateRefused) as ei:
        core.check_contract(signed, bundle, running, DEV)
    assert ei.value.reason == reason, str(ei.value)


@pytest.mark.parametrize("a,b,expected", [
    ("1.0", "1.0.0", 0), ("1.10", "1.9", 1), ("0.9", "1.0", -1), ("2.0.0-rc1", "2.0", 0), ("1.0+x", "1.0.1", -1),
    ("v1", "1.0", None), ("", "1", None), ("1..2", "1.2", None),
])
def test_compare_versions_table(a, b, expected):
    assert core.compare_versions(a, b) == expected
    if expected is not None:  # antisymmetric
        assert core.compare_versions(b, a) == -expected


def _bsdiff_header(control: int, diff: int, out: int) -> bytes:
    def enc(v: int) -> bytes:
        return (abs(v) | ((1 << 63) if v < 0 else 0)).to_bytes(8, "little")
    return core.DELTA_MAGIC + enc(control) + enc(diff) + enc(out)


@pytest.mark.parametrize("patch,length,ok", [
    (_bsdiff_header(10, 10, 500) + b"\0" * 20, 500, True),
    (_bsdiff_header(10, 10, 400_000_000) + b"\0" * 20, 500, False),   # declared output is not the signed one
    (_bsdiff_header(10, 10, -500) + b"\0" * 20, 500, False),
    (_bsdiff_header(-1, 10, 500) + b"\0" * 20, 500, False),           # negative block length
    (_bsdiff_header(10, 1000, 500) + b"\0" * 20, 500, False),         # blocks longer than the patch
    (b"BSDIFF4", 500, False), (b"NOTBSDIF" + b"\0" * 24, 500, False),
])
def test_delta_header_table(patch, length, ok):
    if ok:
        assert core.check_delta_header(patch, length, len(patch)) == (10, 10, 500)
    else:
        with pytest.raises(UpdateRefused, match=r"\[delta\]"):
            core.check_delta_header(patch, length, len(patch))


def test_delta_header_matches_bsdiff4():
    """Our header parser agrees with bsdiff4's own encoder (an independent implementation)."""
    bsdiff4 = require_extra("bsdiff4", "bsdiff4: the ota extra (make test installs it)")
    a, b = b"hello world " * 50, b"hello there " * 60
    patch = bsdiff4.diff(a, b)
    control, diff, out = core.check_delta_header(patch, len(b), len(patch))
    assert out == len(b) and 32 + control + diff <= len(patch)


_PENDING = {"slot": "b", "previous": "a", "release": 2, "attempts_left": 2, "healthy": 0, "healthy_needed": 3}
_GOOD_STATE = {"state_version": 1, "slots": {"a": {"release": 1}}, "good": "a", "floor": 1, "pending": None,
               "rejected": [], "history": []}


@pytest.mark.parametrize("obj,usable,problem", [
    (_GOOD_STATE, True, None),
    ({**_GOOD_STATE, "pending": _PENDING}, True, None),
    ("garbage", False, "state"), ([1, 2], False, "state"), ({**_GOOD_STATE, "state_version": 9}, False, "state"),
    ({**_GOOD_STATE, "slots": {"c": {}}}, False, "slot records"), ({**_GOOD_STATE, "slots": []}, False, "slot"),
    ({**_GOOD_STATE, "floor": -1}, False, "floor"), ({**_GOOD_STATE, "floor": "9"}, False, "floor"),
    ({**_GOOD_STATE, "good": "zz"}, True, "good slot"),
    ({**_GOOD_STATE, "rejected": "x"}, True, "rejected"), ({**_GOOD_STATE, "rejected": ["x"]}, True, "rejected"),
    ({**_GOOD_STATE, "pending": "xyz"}, True, "trial record"),
    ({**_GOOD_STATE, "pending": {**_PENDING, "slot": "c"}}, True, "trial record"),
    ({**_GOOD_STATE, "pending": {**_PENDING, "previous": "b"}}, True, "trial record"),
    ({**_GOOD_STATE, "pending": {**_PENDING, "attempts_left": -1}}, True, "trial record"),
    ({**_GOOD_STATE, "pending": {**_PENDING, "attempts_left": True}}, True, "trial record"),
    ({**_GOOD_STATE, "pending": {**_PENDING, "release": "2"}}, True, "trial record"),
])
def test_state_validation_table(obj, usable, problem):
    state, problems = core.normalize_state(obj, 1)
    assert (state is not None) == usable
    if problem is None:
        assert problems == [] and state["pending"] == obj["pending"]
    else:
        assert problems and problem in problems[0]
    if state is not None and problem is not None and "trial" in problem:
        assert state["pending"] is None


def test_rebuild_state_and_choose_slot():
    h = lambda c: c * 64  # noqa: E731
    records = {"a": {"release": 3, "sha256": h("1"), "good": True}, "b": {"release": 4, "sha256": h("2"),
                                                                         "rejected": True}}
    st = core.rebuild_state(records, 1)
    assert st["floor"] == 3 and st["good"] == "a" and st["rejected"] == [h("2")]
    assert st["pending"] is None
    # choose: the good slot; never a rejected one; else the highest release; None when nothing verifies
    assert core.choose_slot(st, {"a": h("a"), "b": h("b")}) == "a"
    assert core.choose_slot(st, {"a": None, "b": h("b")}) is None                  # b is rejected
    st2 = core.rebuild_state({"a": {"release": 1}, "b": {"release": 2}}, 1)
    assert st2["floor"] == 0 and core.choose_slot(st2, {"a": h("a"), "b": h("b")}) == "b"
    assert core.choose_slot(st2, {"a": None, "b": None}) is None
    assert core.rebuild_state({"a": None, "b": None}, 1)["slots"] == {}


def test_slots_repair_and_lock(build_bundle, tmp_path):
    """IO layer: a stray file where the staging dir and x.tmp belong; a busy lock refuses."""
    import threading
    from edgeuq_runtime.ota.errors import UpdateBusy
    from edgeuq_runtime.ota.slots import update_lock
    b1 = build_bundle("b1").dir
    dev = tmp_path / "dev"
    _install(dev, b1, 1)
    mark_good(dev)
    (dev / "slots" / "b.tmp").write_bytes(b"junk")
    (dev / "staging").write_bytes(b"junk")
    slot = write_slot(dev, unpack_bundle(pack_bundle(b1)))
    assert slot == "b" and (dev / "slots" / "b" / "manifest.json").is_file()
    errors = []

    def other():
        try:
            with update_lock(dev, 0.0):
                pass
        except UpdateBusy as exc:
            errors.append(exc)
    with update_lock(dev):
        with update_lock(dev):  # re-entrant in one thread
            t = threading.Thread(target=other)
            t.start()
            t.join()
    assert len(errors) == 1 and errors[0].reason == "busy" and "another update is running" in str(errors[0])
    other()
    assert len(errors) == 1  # released
