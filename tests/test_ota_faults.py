"""OTA fault suite, part 1: attacks and failures against the in-memory repository simulator.

Every case must be refused with a clear reason code and leave the device exactly as it
was (same slot, same state, same bundle bytes) and still serving predictions. Positive
controls (a legitimate update, delta, key rotations) prove the same paths do install.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ota_support import (BOARD, FAST, MODEL, World, build_world, bundle_files, endless, expect_refused,
                         fresh_keys, make_bundle, release_meta, swap_role, tar_of, update, weights)

from edgeuq.ota.keys import rotate_key
from edgeuq_runtime.ota import current_bundle, mark_good, rollback
from edgeuq_runtime.ota import core
from edgeuq_runtime.ota.archive import pack_bundle
from edgeuq_runtime.ota.updater import UpdateConfig


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    return build_world(tmp_path_factory.mktemp("ota-world"))


NO_DELTA = UpdateConfig(attempts=2, healthy_needed=3, threads=1, delta=False)


def _flip_byte(data: bytes, at: int = -100) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


def _r2_path() -> str:
    return core.bundle_target_path(BOARD, MODEL, 2)


def _delta_path() -> str:
    return core.delta_target_path(BOARD, MODEL, 1, 2)


# -- each case: set the attack up on (world, sim, dev); return (reasons, config) -----------------
def tampered_full_target(w, sim, dev):
    sim.release(w.bundles["r2"])
    u = sim.url_of(_r2_path())
    sim.files[u] = _flip_byte(sim.files[u])
    return {"target-hash"}, NO_DELTA


def tampered_delta(w, sim, dev):
    sim.release(w.bundles["r2"])
    u = sim.url_of(_delta_path())
    sim.files[u] = _flip_byte(sim.files[u], 40)
    return {"target-hash"}, FAST


def truncated_target(w, sim, dev):
    sim.release(w.bundles["r2"])
    u = sim.url_of(_r2_path())
    sim.files[u] = sim.files[u][:1000]
    return {"target-hash"}, NO_DELTA


def endless_target(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.hooks[sim.url_of(_r2_path())] = endless()
    return {"download-length"}, NO_DELTA


def endless_timestamp(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.hooks["metadata/timestamp.json"] = endless()
    return {"download-length"}, FAST


def endless_snapshot(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.hooks["metadata/2.snapshot.json"] = endless(b"{" * 65536)
    return {"download-length"}, FAST


def timestamp_body_tampered(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.edit_json("metadata/timestamp.json", lambda o: o["signed"].update(expires="2099-01-01T00:00:00Z"))
    return {"signature"}, FAST


def timestamp_unsigned(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.edit_json("metadata/timestamp.json", lambda o: o.update(signatures=[]))
    return {"signature"}, FAST


def timestamp_wrong_key(w, sim, dev):
    sim.release(w.bundles["r2"], keys=swap_role(w.keys, "timestamp", w.attacker))
    return {"signature"}, FAST


def snapshot_wrong_key(w, sim, dev):
    sim.release(w.bundles["r2"], keys=swap_role(w.keys, "snapshot", w.attacker))
    return {"signature"}, FAST


def targets_wrong_key(w, sim, dev):
    sim.release(w.bundles["r2"], keys=swap_role(w.keys, "targets", w.attacker))
    return {"signature"}, FAST


def targets_signed_by_timestamp_key(w, sim, dev):
    sim.release(w.bundles["r2"], keys=swap_role(w.keys, "targets", type(w.keys)(
        signers={"targets": w.keys.signers["timestamp"]}, retired_root=(), thresholds={})))
    return {"signature"}, FAST


def targets_custom_edited(w, sim, dev):
    """Attacker rewrites the board in signed targets metadata without the key."""
    sim.release(w.bundles["r2"])
    sim.edit_json("metadata/2.targets.json",
                  lambda o: o["signed"]["targets"][_r2_path()]["custom"]["edgeuq"].update(runtime_abi=1, release=2))
    sim.edit_json("metadata/2.targets.json",
                  lambda o: o["signed"]["targets"][_r2_path()]["hashes"].update(sha256="ab" * 32))
    return {"signature", "metadata-hash"}, FAST


def expired_timestamp(w, sim, dev):
    """Freeze: the attacker keeps serving a timestamp that has gone stale."""
    sim.release(w.bundles["r2"])
    sim.publish(timestamp=-1.0)
    return {"expired"}, FAST


def expired_snapshot(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.publish(snapshot=-1.0)
    return {"expired"}, FAST


def expired_targets(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.publish(targets=-1.0)
    return {"expired"}, FAST


def expired_root(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.repo.root.signed.version += 1
    from datetime import datetime, timedelta, timezone
    sim.repo.root.signed.expires = (datetime.now(timezone.utc) - timedelta(days=1)).replace(microsecond=0)
    sim.repo.root.signatures.clear()
    sim.repo.root.sign(w.keys.signers["root"][0])
    from tuf.api.serialization.json import JSONSerializer
    sim.repo.roots[2] = sim.repo.root.to_bytes(JSONSerializer())
    sim.sync()
    return {"expired"}, FAST


def replayed_old_timestamp(w, sim, dev):
    """Freeze/rollback: after the device saw timestamp v2, the attacker replays v1."""
    old = sim.files["metadata/timestamp.json"]
    sim.publish()
    assert update(dev, sim)["status"] == "up-to-date"  # device now trusts v2
    sim.release(w.bundles["r2"])
    sim.files["metadata/timestamp.json"] = old
    return {"rollback"}, FAST


def timestamp_points_to_old_snapshot(w, sim, dev):
    """Compromised timestamp key: a fresh timestamp naming an older snapshot (rollback)."""
    sim.publish()
    assert update(dev, sim)["status"] == "up-to-date"  # device trusts snapshot v2
    sim.repo.timestamp.signed.version += 1
    from tuf.api.metadata import MetaFile
    sim.repo.timestamp.signed.snapshot_meta = MetaFile(version=1)
    sim.repo.timestamp.signatures.clear()
    sim.repo.timestamp.sign(w.keys.signers["timestamp"][0])
    sim.sync()
    return {"rollback"}, FAST


def mix_and_match_old_targets(w, sim, dev):
    """Serve targets v1 under the URL of targets v2 (named by the new snapshot)."""
    old = sim.files["metadata/1.targets.json"]
    sim.release(w.bundles["r2"])
    sim.files["metadata/2.targets.json"] = old
    return {"rollback", "metadata-hash"}, FAST


def mix_and_match_old_snapshot(w, sim, dev):
    old = sim.files["metadata/1.snapshot.json"]
    sim.release(w.bundles["r2"])
    sim.files["metadata/2.snapshot.json"] = old
    return {"rollback", "metadata-hash"}, FAST


def wrong_board(w, sim, dev):
    sim.release(w.bundles["r2"], custom_override={"board": "other-board"})
    return {"board"}, FAST


def wrong_runtime_abi(w, sim, dev):
    sim.release(w.bundles["r2"], runtime_abi=99)
    return {"abi"}, FAST


def wrong_model(w, sim, dev):
    sim.release(w.bundles["r2"], custom_override={"model": "other-model"})
    return {"model"}, FAST


def release_below_floor(w, sim, dev):
    """A validly signed channel pointing back to release 1 after release 2 was marked good."""
    sim.release(w.bundles["r2"])
    assert update(dev, sim)["release"] == 2
    mark_good(dev)
    sim.repo.add_target(core.channel_target_path(BOARD, MODEL),
                        json.dumps({"release": 1, "target": core.bundle_target_path(BOARD, MODEL, 1)}).encode())
    sim.publish()
    return {"floor"}, FAST


def release_rolled_back_before(w, sim, dev):
    sim.release(w.bundles["r2"])
    assert update(dev, sim)["release"] == 2
    rollback(dev, "test")
    return {"rejected"}, FAST


def pending_trial_blocks_install(w, sim, dev):
    sim.release(w.bundles["r2"])
    assert update(dev, sim)["release"] == 2
    sim.release(w.bundles["r3"])
    return {"pending"}, FAST


def bundle_file_not_in_hash_list(w, sim, dev):
    files = bundle_files(w.bundles["r2"])
    files["head.onnx"] = _flip_byte(files["head.onnx"], -20)
    sim.raw_release(tar_of(files), release_meta(w.bundles["r2"], 2))
    return {"bundle-integrity"}, FAST


def extra_file_in_archive(w, sim, dev):
    files = bundle_files(w.bundles["r2"])
    files["evil.sh"] = b"#!/bin/sh\n"
    sim.raw_release(tar_of(files), release_meta(w.bundles["r2"], 2))
    return {"bundle-integrity"}, FAST


def manifest_digest_mismatch(w, sim, dev):
    sim.raw_release(pack_bundle(w.bundles["r2"]), release_meta(w.bundles["r2"], 2, manifest_sha256="cd" * 32))
    return {"bundle-integrity"}, FAST


def manifest_unknown_version(w, sim, dev):
    files = bundle_files(w.bundles["r2"])
    m = json.loads(files["manifest.json"])
    m["manifest_version"] = 99
    files["manifest.json"] = json.dumps(m).encode()
    meta = release_meta(w.bundles["r2"], 2, manifest_sha256=core.sha256_bytes(files["manifest.json"]))
    sim.raw_release(tar_of(files), meta)
    return {"bundle-integrity"}, FAST


def archive_path_traversal(w, sim, dev):
    files = bundle_files(w.bundles["r2"])
    files["../../escape.onnx"] = b"x"
    sim.raw_release(tar_of(files), release_meta(w.bundles["r2"], 2))
    return {"archive"}, FAST


def archive_absolute_path(w, sim, dev):
    files = bundle_files(w.bundles["r2"])
    files["/etc/passwd"] = b"x"
    sim.raw_release(tar_of(files), release_meta(w.bundles["r2"], 2))
    return {"archive"}, FAST


def archive_symlink_member(w, sim, dev):
    import tarfile

    def link(tar):
        info = tarfile.TarInfo("head2.onnx")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(info)
    sim.raw_release(tar_of(bundle_files(w.bundles["r2"]), link), release_meta(w.bundles["r2"], 2))
    return {"archive"}, FAST


def archive_without_manifest(w, sim, dev):
    files = bundle_files(w.bundles["r2"])
    del files["manifest.json"]
    sim.raw_release(tar_of(files), release_meta(w.bundles["r2"], 2))
    return {"archive"}, FAST


def archive_not_a_tar(w, sim, dev):
    sim.raw_release(np.random.default_rng(3).bytes(5000), release_meta(w.bundles["r2"], 2))
    return {"archive"}, FAST


def canary_digest_mismatch(w, sim, dev):
    sim.release(w.bundles["r2"], custom_override={"canary_sha256": "ef" * 32})
    return {"canary-digest"}, FAST


def bundle_without_canaries(w, sim, dev):
    W, V = weights(0)
    b = make_bundle(w.tmp / "nc", "nocanary", W, V + 0.01, "1.1", canaries=False)
    sim.raw_release(pack_bundle(b), release_meta(b, 2))
    return {"canary-missing"}, FAST


def _bundle_with_r1_canaries(w, name: str, V: np.ndarray, spec_edit=None) -> Path:
    """A new model carrying release 1's canaries (so the canaries judge the new model)."""
    import shutil
    from edgeuq_runtime import load_bundle
    from edgeuq_runtime.ota.canaries import SECTION, canaries_of

    W, _ = weights(0)
    b = make_bundle(w.tmp / name, name, W, V, "1.1", canaries=False)
    r1 = load_bundle(w.bundles["r1"]).manifest
    spec = canaries_of(r1)
    if spec_edit:
        spec = spec_edit(spec)
    shutil.copy(w.bundles["r1"] / spec.file, w.tmp / name / "c.npz")
    load_bundle(b).amend(sections={SECTION: spec}, files={spec.file: w.tmp / name / "c.npz"})
    return b


def canary_class_changed(w, sim, dev):
    _, V = weights(0)
    b = _bundle_with_r1_canaries(w, "swapped", V[:, ::-1].copy())  # classes permuted
    sim.release(b)
    return {"canary-class"}, FAST


def canary_mi_off(w, sim, dev):
    import dataclasses
    _, V = weights(0)
    b = _bundle_with_r1_canaries(w, "mi", V, lambda s: dataclasses.replace(
        s, expected_mi=tuple(v + 0.2 for v in s.expected_mi), mi_tolerance=0.05))
    sim.release(b)
    return {"canary-mi"}, FAST


def canary_noise_stream_other(w, sim, dev):
    """r1's own model and canaries (they pass on this device), but recorded as computed with
    another runtime noise stream: refused for the stream alone."""
    import dataclasses
    _, V = weights(0)
    b = _bundle_with_r1_canaries(w, "stream", V, lambda s: dataclasses.replace(s, noise_stream="another-stream-0"))
    sim.release(b)
    return {"canary-stream"}, FAST


def canary_latency_budget(w, sim, dev):
    W, V = weights(0)
    b = make_bundle(w.tmp / "lat", "lat", W, V + 0.01, "1.1", latency_budget_ms=1e-6)
    sim.release(b)
    return {"canary-latency"}, FAST


def canary_model_does_not_run(w, sim, dev):
    """The head graph's input names do not match the manifest: the runtime refuses to load it."""
    import dataclasses
    from edgeuq_runtime import load_bundle, write_bundle
    from rt_helpers import make_trunk

    W, V = weights(0)
    b = make_bundle(w.tmp / "norun", "norun", W, V, "1.1")
    make_trunk(w.tmp / "norun" / "t2.onnx", W, input_name="other")
    m = load_bundle(b).manifest
    sources = {n: b / n for n in m.files}
    sources["trunk.onnx"] = w.tmp / "norun" / "t2.onnx"
    write_bundle(b, dataclasses.replace(m, files={}), sources, overwrite=True)
    sim.release(b)
    return {"canary-run"}, FAST


def channel_names_unsigned_target(w, sim, dev):
    sim.repo.add_target(core.channel_target_path(BOARD, MODEL),
                        json.dumps({"release": 7, "target": core.bundle_target_path(BOARD, MODEL, 7)}).encode())
    sim.publish()
    return {"metadata"}, FAST


def channel_malformed(w, sim, dev):
    sim.repo.add_target(core.channel_target_path(BOARD, MODEL), b"{not json")
    sim.publish()
    return {"channel"}, FAST


def channel_points_to_other_board(w, sim, dev):
    sim.repo.add_target(core.channel_target_path(BOARD, MODEL), json.dumps(
        {"release": 2, "target": core.bundle_target_path("other-board", MODEL, 2)}).encode())
    sim.publish()
    return {"channel"}, FAST


def channel_missing(w, sim, dev):
    del sim.repo.targets.signed.targets[core.channel_target_path(BOARD, MODEL)]
    sim.publish()
    return {"metadata"}, FAST


def timestamp_404(w, sim, dev):
    sim.release(w.bundles["r2"])
    del sim.files["metadata/timestamp.json"]
    return {"download-http"}, FAST


def target_404(w, sim, dev):
    sim.release(w.bundles["r2"])
    del sim.files[sim.url_of(_r2_path())]
    return {"download-http"}, NO_DELTA


def delta_claims_other_result(w, sim, dev):
    """A signed delta whose declared result is not the signed release."""
    res = sim.release(w.bundles["r2"])
    tf = sim.repo.targets.signed.targets[_delta_path()]
    tf.unrecognized_fields["custom"]["edgeuq"]["delta"]["result_sha256"] = "12" * 32
    sim.publish()
    return {"delta"}, FAST


def delta_produces_other_bundle(w, sim, dev):
    """A signed delta with the right declared hashes whose patch yields different bytes."""
    from edgeuq.ota.publish import make_delta
    sim.release(w.bundles["r2"])
    base = pack_bundle(w.bundles["r1"])
    wrong = make_delta(base, pack_bundle(w.bundles["r3"]))
    tf = sim.repo.targets.signed.targets[_delta_path()]
    sim.repo.add_target(_delta_path(), wrong, dict(tf.unrecognized_fields["custom"]))
    sim.publish()
    return {"target-hash"}, FAST


def delta_garbage_patch(w, sim, dev):
    sim.release(w.bundles["r2"])
    tf = sim.repo.targets.signed.targets[_delta_path()]
    sim.repo.add_target(_delta_path(), b"BSDIFF40" + b"\x07" * 200, dict(tf.unrecognized_fields["custom"]))
    sim.publish()
    return {"delta"}, FAST


def root_rotation_not_signed_by_old_root(w, sim, dev):
    """An attacker-built root v2 signed by the new key only (`sync_keys` refuses to make one)."""
    new = fresh_keys(w.tmp / "rot1", "k")
    root = sim.repo.root.signed
    for kid in list(root.roles["root"].keyids):
        root.revoke_key(kid, "root")
    root.add_key(new.signers["root"][0].public_key, "root")
    root.version += 1
    sim.repo.root.signatures.clear()
    sim.repo.root.sign(new.signers["root"][0])
    from tuf.api.serialization.json import JSONSerializer
    sim.repo.roots[root.version] = sim.repo.root.to_bytes(JSONSerializer())
    sim.release(w.bundles["r2"])
    return {"signature"}, FAST


def root_rotation_threshold_not_met(w, sim, dev):
    """New root needs 2 of 2 new keys; only one of them (plus the old key) signed."""
    import dataclasses
    new = fresh_keys(w.tmp / "rot2", "k", thresholds={"root": 2})
    keys = dataclasses.replace(w.keys, signers={**w.keys.signers, "root": new.signers["root"][:1]},
                               thresholds={**w.keys.thresholds, "root": 2}, retired_root=w.keys.signers["root"])
    root = sim.repo.root.signed
    for kid in list(root.roles["root"].keyids):
        root.revoke_key(kid, "root")
    for s in new.signers["root"]:
        root.add_key(s.public_key, "root")
    root.roles["root"].threshold = 2
    root.version += 1
    sim.repo.root.signatures.clear()
    for s in list(keys.signers["root"]) + list(w.keys.signers["root"]):
        sim.repo.root.sign(s, append=True)
    from tuf.api.serialization.json import JSONSerializer
    sim.repo.roots[root.version] = sim.repo.root.to_bytes(JSONSerializer())
    sim.release(w.bundles["r2"])
    return {"signature"}, FAST


def root_duplicate_signatures(w, sim, dev):
    """Threshold 2 'met' by the same key listed twice."""
    import dataclasses
    new = fresh_keys(w.tmp / "rot3", "k", thresholds={"root": 2})
    keys = dataclasses.replace(w.keys, signers={**w.keys.signers, "root": new.signers["root"]},
                               thresholds={**w.keys.thresholds, "root": 2}, retired_root=w.keys.signers["root"])
    sim.repo.sync_keys(keys)
    sim.release(w.bundles["r2"])
    rel = "metadata/2.root.json"
    obj = json.loads(sim.files[rel])
    obj["signatures"] = [obj["signatures"][0], obj["signatures"][0]]
    sim.files[rel] = json.dumps(obj).encode()
    return {"tuf"}, FAST


def targets_key_rotated_old_key_signs(w, sim, dev):
    """Root v2 rotates the targets key; metadata signed with the old targets key is refused."""
    new = fresh_keys(w.tmp / "rot4", "k")
    keys = dataclasses_replace_roles(w.keys, targets=new.signers["targets"])
    sim.repo.sync_keys(dataclasses_replace_roles(keys, retired=w.keys.signers["root"]))
    sim.release(w.bundles["r2"], keys=w.keys)  # old targets key
    return {"signature"}, FAST


def targets_threshold_two_one_signature(w, sim, dev):
    new = fresh_keys(w.tmp / "rot5", "k", thresholds={"targets": 2})
    import dataclasses
    keys = dataclasses.replace(w.keys, signers={**w.keys.signers, "targets": new.signers["targets"]},
                               thresholds={**w.keys.thresholds, "targets": 2})
    sim.repo.sync_keys(keys)
    one = dataclasses.replace(keys, signers={**keys.signers, "targets": new.signers["targets"][:1]})
    sim.release(w.bundles["r2"], keys=one)
    return {"signature"}, FAST


def dataclasses_replace_roles(keys, retired=None, **roles):
    import dataclasses
    return dataclasses.replace(keys, signers={**keys.signers, **roles},
                               retired_root=keys.retired_root if retired is None else tuple(retired))


def length_lies_in_signed_metadata(w, sim, dev):
    """Signed length shorter than the served file: the download is cut at the signed length."""
    sim.release(w.bundles["r2"])
    tf = sim.repo.targets.signed.targets[_r2_path()]
    u = sim.url_of(_r2_path())
    tf.length = tf.length - 512
    sim.publish()
    sim.files[sim.url_of(_r2_path())] = sim.files[u]
    return {"download-length"}, NO_DELTA


def metadata_spec_version_unsupported(w, sim, dev):
    sim.release(w.bundles["r2"])
    sim.repo.timestamp.signed.version += 1
    sim.repo.timestamp.signed.spec_version = "2.0.0"
    sim.repo.timestamp.signatures.clear()
    sim.repo.timestamp.sign(w.keys.signers["timestamp"][0])
    sim.sync()
    return {"tuf"}, FAST


def metadata_wrong_type(w, sim, dev):
    """A validly signed snapshot served as the timestamp (role confusion)."""
    sim.release(w.bundles["r2"])
    sim.files["metadata/timestamp.json"] = sim.files["metadata/2.snapshot.json"]
    return {"tuf"}, FAST


CASES = [tampered_full_target, tampered_delta, truncated_target, endless_target, endless_timestamp,
         endless_snapshot, timestamp_body_tampered, timestamp_unsigned, timestamp_wrong_key, snapshot_wrong_key,
         targets_wrong_key, targets_signed_by_timestamp_key, targets_custom_edited, expired_timestamp,
         expired_snapshot, expired_targets, expired_root, replayed_old_timestamp, timestamp_points_to_old_snapshot,
         mix_and_match_old_targets, mix_and_match_old_snapshot, wrong_board, wrong_runtime_abi, wrong_model,
         release_below_floor, release_rolled_back_before, pending_trial_blocks_install, bundle_file_not_in_hash_list,
         extra_file_in_archive, manifest_digest_mismatch, manifest_unknown_version, archive_path_traversal,
         archive_absolute_path, archive_symlink_member, archive_without_manifest, archive_not_a_tar,
         canary_digest_mismatch, bundle_without_canaries, canary_class_changed, canary_mi_off, canary_noise_stream_other,
         canary_latency_budget,
         canary_model_does_not_run, channel_names_unsigned_target, channel_malformed, channel_points_to_other_board,
         channel_missing, timestamp_404, target_404, delta_claims_other_result, delta_produces_other_bundle,
         delta_garbage_patch, root_rotation_not_signed_by_old_root, root_rotation_threshold_not_met,
         root_duplicate_signatures, targets_key_rotated_old_key_signs, targets_threshold_two_one_signature,
         length_lies_in_signed_metadata, metadata_spec_version_unsupported, metadata_wrong_type]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_fault_refused_and_device_untouched(world, tmp_path, case):
    sim, dev = world.fresh(tmp_path)
    reasons, config = case(world, sim, dev)
    expect_refused(dev, sim, reasons, config=config)


# -- positive controls: the same machinery installs what it should ---------------------------------
def test_control_full_and_delta_updates_install(world, tmp_path):
    sim, dev = world.fresh(tmp_path)
    sim.release(world.bundles["r2"])
    out = update(dev, sim)
    assert out["status"] == "installed" and out["release"] == 2 and out["delta"] is True
    assert current_bundle(dev).name == "b"
    assert (current_bundle(dev) / "head.onnx").read_bytes() == (world.bundles["r2"] / "head.onnx").read_bytes()
    sim2, dev2 = world.fresh(tmp_path / "full")
    sim2.release(world.bundles["r2"])
    out2 = update(dev2, sim2, config=NO_DELTA)
    assert out2["delta"] is False and out2["bytes"] > out["bytes"]


def test_control_root_and_targets_key_rotation_accepted(world, tmp_path):
    """A proper rotation (new root signed by old and new root keys, new targets key) installs."""
    import dataclasses
    sim, dev = world.fresh(tmp_path)
    new = fresh_keys(tmp_path, "new", thresholds={"root": 2, "targets": 2})
    keys = dataclasses.replace(new, retired_root=world.keys.signers["root"])
    sim.repo.sync_keys(keys)
    sim.keys = keys
    sim.release(world.bundles["r2"])
    assert update(dev, sim)["release"] == 2
    assert (dev / "tuf" / "root_history" / "2.root.json").is_file()


def test_control_keys_rotate_on_disk_then_publish(tmp_path):
    """`edgeuq keys rotate` + publish_bundle writes root v2 that a device bootstrapped on v1 accepts."""
    from edgeuq.ota.keys import generate_keys
    from edgeuq.ota.publish import publish_bundle
    from edgeuq_runtime.ota.updater import OtaUpdater, provision
    from ota_support import make_bundle, weights
    W, V = weights(0)
    b1 = make_bundle(tmp_path, "b1", W, V, "1.0")
    b2 = make_bundle(tmp_path, "b2", W, V + 0.02, "1.1")
    generate_keys(tmp_path / "keys")
    publish_bundle(b1, tmp_path / "repo", tmp_path / "keys", BOARD)
    root1 = (tmp_path / "repo" / "metadata" / "1.root.json").read_bytes()
    dev = tmp_path / "dev"
    provision(dev, BOARD, MODEL, (tmp_path / "repo").as_uri(), root1)
    assert OtaUpdater(dev, config=FAST).update()["release"] == 1
    mark_good(dev)
    rotate_key(tmp_path / "keys", "root")
    rotate_key(tmp_path / "keys", "targets")
    res = publish_bundle(b2, tmp_path / "repo", tmp_path / "keys", BOARD)
    assert res.root_version == 2 and res.deltas
    out = OtaUpdater(dev, config=FAST).update()
    assert out["release"] == 2 and out["delta"] is True
