"""Bundle.amend: the one way to change a written bundle (files added, replaced or dropped,
sections merged, fields replaced), every file hashed again and the manifest rewritten atomically."""
from __future__ import annotations

import hashlib

import pytest

from edgeuq_runtime import BundleError, load_bundle


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_amend_adds_replaces_and_drops_files_and_rehashes(tiny, tmp_path):
    extra = tmp_path / "extra.bin"
    extra.write_bytes(b"first")
    b = load_bundle(tiny.dir).amend(files={"extra.bin": extra}, default_samples=7)
    again = load_bundle(tiny.dir, verify=True)                   # verifies every hash
    assert again.manifest.default_samples == 7 and again.digest == b.digest
    assert again.digest == hashlib.sha256((tiny.dir / "manifest.json").read_bytes()).hexdigest()
    assert again.manifest.files["extra.bin"] == hashlib.sha256(b"first").hexdigest()
    assert again.manifest.files["trunk.onnx"] == _sha(tiny.dir / "trunk.onnx")

    extra.write_bytes(b"second")                                  # a replaced file is hashed anew
    again.amend(files={"extra.bin": extra})
    assert load_bundle(tiny.dir).manifest.files["extra.bin"] == hashlib.sha256(b"second").hexdigest()

    gone = load_bundle(tiny.dir).amend(drop=["extra.bin"])
    assert "extra.bin" not in gone.manifest.files and "extra.bin" not in load_bundle(tiny.dir).manifest.files


def test_amend_into_another_folder_leaves_the_original(tiny, tmp_path):
    before = (tiny.dir / "manifest.json").read_bytes()
    copy = load_bundle(tiny.dir).amend(out=tmp_path / "copy", default_samples=3)
    assert (tiny.dir / "manifest.json").read_bytes() == before
    assert load_bundle(tmp_path / "copy").manifest.default_samples == 3 and copy.root == tmp_path / "copy"


def test_amend_refuses_unknown_drops_and_the_manifest_itself(tiny, tmp_path):
    b = load_bundle(tiny.dir)
    with pytest.raises(BundleError, match="cannot drop"):
        b.amend(drop=["nope.bin"])
    with pytest.raises(BundleError, match="manifest.json"):
        b.amend(files={"manifest.json": tmp_path / "x"})
    with pytest.raises(BundleError, match="manifest.json"):
        b.amend(drop=["manifest.json"])


def test_amend_merges_and_removes_sections(tiny):
    b = load_bundle(tiny.dir)
    assert "canaries" not in b.manifest.sections
    assert b.amend(sections={"canaries": None}).manifest.sections == b.manifest.sections
