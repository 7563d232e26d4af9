"""Key hygiene: one folder per role, private keys encrypted at rest, publish loads only the keys
it needs (root and targets can stay offline), no key is ever skipped silently, the old layout
still loads (with the command to migrate), and the root rotation procedure end to end on a
device bootstrapped with the first root."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from ota_support import BOARD, MODEL, make_bundle, weights

from edgeuq.ota import keys as K
from edgeuq.ota.keys import KeyDirError, LegacyKeyDirWarning, generate_keys, load_keys, rotate_key
from edgeuq.ota.publish import publish_bundle
from edgeuq_runtime.ota import mark_good
from edgeuq_runtime.ota.errors import UpdateRefused
from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig, provision

PW = "correct horse battery staple"
CFG = UpdateConfig(attempts=2, healthy_needed=2, threads=1)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("keys-bundles")
    W, V = weights(0)
    return [make_bundle(tmp, f"b{i}", W, V + 0.01 * i * weights(i + 1)[1], f"1.{i}") for i in range(4)]


@pytest.fixture
def loaded(monkeypatch):
    """Records every private key file that is read (the independent view of what was loaded)."""
    seen = []
    real = K._load_private

    def spy(path, pw):
        seen.append(Path(path))
        return real(path, pw)
    monkeypatch.setattr(K, "_load_private", spy)
    return seen


def _tree(d: Path) -> dict:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_one_folder_per_role_and_every_private_key_encrypted(tmp_path):
    index = generate_keys(tmp_path / "k", thresholds={"root": 2}, counts={"root": 3}, passphrase=PW)
    for role in K.ROLES:
        files = sorted((tmp_path / "k" / role).iterdir())
        assert [f.name for f in files] == [f"{role}-{i}.pem" for i in range(1, len(index["roles"][role]["current"]) + 1)]
        for f in files:
            head = f.read_bytes().splitlines()[0]
            assert head == b"-----BEGIN ENCRYPTED PRIVATE KEY-----", (f, head)
            assert f.stat().st_mode & 0o077 == 0, f"{f} is readable by others"
    assert len(index["roles"]["root"]["current"]) == 3
    assert b"PRIVATE" not in (tmp_path / "k" / "keys.json").read_bytes()
    assert not list((tmp_path / "k").glob("*.pem")), "no key next to the index any more"
    ks = load_keys(tmp_path / "k", passphrase=PW)
    assert {r: len(ks.signers[r]) for r in K.ROLES} == {"root": 3, "targets": 1, "snapshot": 1, "timestamp": 1}
    # the public keys in the index are the ones of the private keys
    assert [k.keyid for k in ks.public_keys["root"]] == [s.public_key.keyid for s in ks.signers["root"]]


def test_wrong_or_missing_passphrase_is_a_clear_error(tmp_path, monkeypatch):
    generate_keys(tmp_path / "k", passphrase=PW)
    with pytest.raises(KeyDirError, match=r"cannot decrypt key file .*targets-1\.pem.*wrong passphrase"):
        load_keys(tmp_path / "k", roles=["targets"], passphrase="not it")
    monkeypatch.delenv(K.PASSPHRASE_ENV, raising=False)
    monkeypatch.setattr("sys.stdin", None)
    with pytest.raises(KeyDirError, match=r"no passphrase for the snapshot key: set \$EDGEUQ_OTA_PASSPHRASE"):
        load_keys(tmp_path / "k", roles=["snapshot"])


def test_passphrase_from_env_role_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv(K.PASSPHRASE_ENV, "from-env")
    generate_keys(tmp_path / "k")
    assert load_keys(tmp_path / "k", roles=["timestamp"]).loaded == ("timestamp",)
    # a per-role variable wins over the general one
    monkeypatch.setenv(K.PASSPHRASE_ENV + "_TIMESTAMP", "other")
    with pytest.raises(KeyDirError, match="timestamp-1.pem"):
        load_keys(tmp_path / "k", roles=["timestamp"])
    pwf = tmp_path / "pw.txt"
    pwf.write_text("from-env\n")
    assert len(load_keys(tmp_path / "k", roles=["timestamp"], passphrase_file=pwf).signers["timestamp"]) == 1
    pwf.write_text("")
    with pytest.raises(KeyDirError, match="is empty"):
        load_keys(tmp_path / "k", roles=["timestamp"], passphrase_file=pwf)


def test_roles_not_loaded_are_not_usable_by_accident(tmp_path):
    generate_keys(tmp_path / "k", passphrase=PW)
    ks = load_keys(tmp_path / "k", roles=["snapshot", "timestamp"], passphrase=PW)
    with pytest.raises(KeyDirError, match="role 'targets' were not loaded"):
        ks.signers["targets"]
    assert len(ks.public("root")) == 1 and len(ks.public("targets")) == 1  # public keys from the index


def _device(repo: Path, dest: Path) -> Path:
    provision(dest, BOARD, MODEL, repo.as_uri(), (repo / "metadata" / "1.root.json").read_bytes())
    return dest


def test_publish_loads_only_what_it_needs_root_and_targets_offline(tmp_path, bundles, loaded):
    kd, repo = tmp_path / "k", tmp_path / "repo"
    generate_keys(kd, passphrase=PW)
    publish_bundle(bundles[0], repo, kd, BOARD, passphrase=PW)
    assert {p.parent.name for p in loaded} == set(K.ROLES), "the first publish signs root v1"
    # root goes offline: a release needs targets + snapshot + timestamp only
    shutil.move(str(kd / "root"), str(tmp_path / "offline-root"))
    loaded.clear()
    publish_bundle(bundles[1], repo, kd, BOARD, passphrase=PW)
    assert sorted(p.parent.name for p in loaded) == ["snapshot", "targets", "timestamp"]
    assert K.keys_for_publish(kd, repo, passphrase=PW, roles=("snapshot", "timestamp")).loaded == (
        "snapshot", "timestamp")
    # targets offline too: a new release is refused, naming the file, and the repository is untouched
    shutil.move(str(kd / "targets"), str(tmp_path / "offline-targets"))
    before = _tree(repo)
    with pytest.raises(KeyDirError, match=r"key file .*targets-1\.pem' is missing"):
        publish_bundle(bundles[2], repo, kd, BOARD, passphrase=PW)
    assert _tree(repo) == before
    # an offline medium can be named per role instead of copying the keys back
    ks = K.keys_for_publish(kd, repo, passphrase=PW, role_dirs={"targets": tmp_path / "offline-targets"})
    assert ks.loaded == ("targets", "snapshot", "timestamp")
    dev = _device(repo, tmp_path / "dev")
    assert OtaUpdater(dev, config=CFG).update()["release"] == 2


def test_root_rotation_procedure_end_to_end(tmp_path, bundles, loaded):
    """generate -> publish r1 -> device (root v1) installs -> rotate root -> publish r2 (root v2
    signed by old and new key) -> device installs -> retired key file deleted -> publish r3 (root
    not loaded) -> old device and a fresh device bootstrapped on v1 both install r3."""
    kd, repo = tmp_path / "k", tmp_path / "repo"
    generate_keys(kd, passphrase=PW)
    publish_bundle(bundles[0], repo, kd, BOARD, passphrase=PW)
    dev = _device(repo, tmp_path / "dev")
    assert OtaUpdater(dev, config=CFG).update()["release"] == 1
    mark_good(dev)
    old_id = json.loads((kd / "keys.json").read_text())["roles"]["root"]["current"][0]["keyid"]
    rotate_key(kd, "root", passphrase=PW)
    new_id = json.loads((kd / "keys.json").read_text())["roles"]["root"]["current"][0]["keyid"]
    loaded.clear()
    res = publish_bundle(bundles[1], repo, kd, BOARD, passphrase=PW)
    assert res.root_version == 2
    assert sorted(p.name for p in loaded if p.parent.name == "root") == ["root-1.pem", "root-2.pem"]
    v2 = json.loads((repo / "metadata" / "2.root.json").read_text())
    assert {s["keyid"] for s in v2["signatures"]} == {old_id, new_id}
    assert v2["signed"]["roles"]["root"]["keyids"] == [new_id]
    assert OtaUpdater(dev, config=CFG).update()["release"] == 2
    mark_good(dev)
    # the rotation is published: the retired key is not needed any more (and root is not loaded)
    (kd / "root" / "root-1.pem").unlink()
    loaded.clear()
    assert publish_bundle(bundles[2], repo, kd, BOARD, passphrase=PW).root_version == 2
    assert "root" not in {p.parent.name for p in loaded}
    assert OtaUpdater(dev, config=CFG).update()["release"] == 3
    fresh = _device(repo, tmp_path / "fresh")
    assert OtaUpdater(fresh, config=CFG).update()["release"] == 3


def test_missing_retired_root_key_refuses_the_rotation_naming_the_file(tmp_path, bundles):
    kd, repo = tmp_path / "k", tmp_path / "repo"
    generate_keys(kd, passphrase=PW)
    publish_bundle(bundles[0], repo, kd, BOARD, passphrase=PW)
    dev = _device(repo, tmp_path / "dev")
    assert OtaUpdater(dev, config=CFG).update()["release"] == 1
    mark_good(dev)
    rotate_key(kd, "root", passphrase=PW)
    shutil.move(str(kd / "root" / "root-1.pem"), str(tmp_path / "root-1.pem"))
    before = _tree(repo)
    with pytest.raises(KeyDirError, match=r"signed by 1 of the old root keys, but only 0 are at hand; missing key "
                                          r"files: \['[^']*root/root-1\.pem'\]"):
        publish_bundle(bundles[1], repo, kd, BOARD, passphrase=PW)
    assert _tree(repo) == before, "nothing was published"
    assert OtaUpdater(dev, config=CFG).update()["status"] == "up-to-date"
    # putting the key back repairs it: root v2 is signed by both and the device follows
    shutil.move(str(tmp_path / "root-1.pem"), str(kd / "root" / "root-1.pem"))
    assert publish_bundle(bundles[1], repo, kd, BOARD, passphrase=PW).root_version == 2
    assert OtaUpdater(dev, config=CFG).update()["release"] == 2


def test_rotation_with_threshold_two_tolerates_one_missing_retired_key_with_a_warning(tmp_path, bundles):
    kd, repo = tmp_path / "k", tmp_path / "repo"
    generate_keys(kd, thresholds={"root": 2}, counts={"root": 3}, passphrase=PW)
    publish_bundle(bundles[0], repo, kd, BOARD, passphrase=PW)
    dev = _device(repo, tmp_path / "dev")
    assert OtaUpdater(dev, config=CFG).update()["release"] == 1
    mark_good(dev)
    rotate_key(kd, "root", passphrase=PW)
    (kd / "root" / "root-3.pem").unlink()
    with pytest.warns(UserWarning, match=r"root-3\.pem.*still met"):
        publish_bundle(bundles[1], repo, kd, BOARD, passphrase=PW)
    assert OtaUpdater(dev, config=CFG).update()["release"] == 2
    # two missing: below the old threshold -> refused, both named
    rotate_key(kd, "root", passphrase=PW)
    for name in ("root-4.pem", "root-5.pem"):
        (kd / "root" / name).unlink()
    with pytest.raises(KeyDirError, match=r"only 1 are at hand.*root-4\.pem.*root-5\.pem"):
        publish_bundle(bundles[2], repo, kd, BOARD, passphrase=PW)


def _legacy_dir(d: Path) -> dict:
    """A key directory exactly as the format-1 code wrote it (plaintext PKCS8, one folder)."""
    from securesystemslib.signer import CryptoSigner

    d.mkdir()
    index = {"roles": {}}
    for role in K.ROLES:
        s = CryptoSigner.generate_ed25519()
        (d / f"{role}-1.pem").write_bytes(s.private_bytes)
        index["roles"][role] = {"threshold": 1, "current": [{"file": f"{role}-1.pem", "keyid": s.public_key.keyid}],
                                "retired": []}
    (d / "keys.json").write_text(json.dumps(index))
    return index


def test_old_layout_loads_with_a_migration_message_then_migrates(tmp_path, bundles):
    old = _legacy_dir(tmp_path / "k")
    with pytest.warns(LegacyKeyDirWarning, match=r"edgeuq keys migrate .*k"):
        ks = load_keys(tmp_path / "k")
    assert ks.signers["root"][0].public_key.keyid == old["roles"]["root"]["current"][0]["keyid"]
    with pytest.raises(KeyDirError, match="run `edgeuq keys migrate"):
        rotate_key(tmp_path / "k", "targets", passphrase=PW)
    with pytest.warns(LegacyKeyDirWarning):
        publish_bundle(bundles[0], tmp_path / "repo", tmp_path / "k", BOARD)
    K.migrate_keys(tmp_path / "k", passphrase=PW)
    assert not list((tmp_path / "k").glob("*.pem")), "plaintext keys removed"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = load_keys(tmp_path / "k", passphrase=PW)
    for role in K.ROLES:
        assert new.signers[role][0].public_key.keyid == old["roles"][role]["current"][0]["keyid"]
    # same keys: the next publish needs no root rotation
    assert publish_bundle(bundles[1], tmp_path / "repo", tmp_path / "k", BOARD, passphrase=PW).root_version == 1


def test_cli_generate_show_rotate_migrate_with_passphrase_file(tmp_path, capsys, monkeypatch):
    from edgeuq.cli import main as edgeuq_main

    monkeypatch.delenv(K.PASSPHRASE_ENV, raising=False)
    pwf = tmp_path / "pw"
    pwf.write_text(PW + "\n")
    assert edgeuq_main(["keys", "generate", str(tmp_path / "k"), "--passphrase-file", str(pwf)]) == 0
    assert edgeuq_main(["keys", "rotate", str(tmp_path / "k"), "root", "--passphrase-file", str(pwf)]) == 0
    out = capsys.readouterr().out
    assert "keep the retired root key files" in out
    assert edgeuq_main(["keys", "show", str(tmp_path / "k")]) == 0
    assert "root       threshold 1" in capsys.readouterr().out
    assert len(load_keys(tmp_path / "k", passphrase=PW).retired_root) == 1
    _legacy_dir(tmp_path / "old")
    assert edgeuq_main(["keys", "migrate", str(tmp_path / "old"), "--passphrase-file", str(pwf)]) == 0
    assert load_keys(tmp_path / "old", roles=["timestamp"], passphrase_file=pwf).loaded == ("timestamp",)


def test_targets_rotation_loads_the_current_root_but_no_retired_key(tmp_path, bundles, loaded):
    kd, repo = tmp_path / "k", tmp_path / "repo"
    generate_keys(kd, passphrase=PW)
    publish_bundle(bundles[0], repo, kd, BOARD, passphrase=PW)
    dev = _device(repo, tmp_path / "dev")
    assert OtaUpdater(dev, config=CFG).update()["release"] == 1
    mark_good(dev)
    rotate_key(kd, "targets", passphrase=PW)
    loaded.clear()
    assert publish_bundle(bundles[1], repo, kd, BOARD, passphrase=PW).root_version == 2
    assert sorted(p.name for p in loaded) == ["root-1.pem", "snapshot-1.pem", "targets-2.pem", "timestamp-1.pem"]
    assert OtaUpdater(dev, config=CFG).update()["release"] == 2
    # a re-sign of snapshot + timestamp while a rotation is pending needs root, not targets
    rotate_key(kd, "snapshot", passphrase=PW)
    assert K.keys_for_publish(kd, repo, passphrase=PW, roles=("snapshot", "timestamp")).loaded == (
        "root", "snapshot", "timestamp")
