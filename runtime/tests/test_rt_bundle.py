"""Bundle directories: write, load, integrity, and refusal to clobber."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

import edgeuq_runtime.bundle as bundle_mod
from edgeuq_runtime import (BundleError, GraphSpec, IntegrityError, ManifestError, load_bundle,
                            sha256_file, write_bundle)
from rt_helpers import make_manifest


def test_sha256_file_streams(tmp_path):
    p = tmp_path / "blob.bin"
    data = os.urandom(10_000)
    p.write_bytes(data)
    assert sha256_file(p, chunk_size=97) == hashlib.sha256(data).hexdigest() == sha256_file(p)


def test_write_then_load_round_trip(tiny):
    text = (tiny.dir / "manifest.json").read_text()
    assert text == tiny.manifest.dumps()
    for name in ("trunk.onnx", "head.onnx"):
        assert tiny.manifest.files[name] == hashlib.sha256((tiny.dir / name).read_bytes()).hexdigest()
    b = load_bundle(tiny.dir)
    assert b.manifest == tiny.manifest and b.root == tiny.dir
    assert b.path("head.onnx") == tiny.dir / "head.onnx"
    with pytest.raises(BundleError, match=r"bad bundle file name: file: must not contain '\.\.'"):
        b.path("../escape")


def test_missing_dir(tmp_path):
    with pytest.raises(BundleError, match=r"bundle directory .*nowhere.* does not exist"):
        load_bundle(tmp_path / "nowhere")


def test_path_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(BundleError, match="is not a directory"):
        load_bundle(tmp_path / "f")


def test_missing_manifest(tiny):
    (tiny.dir / "manifest.json").unlink()
    with pytest.raises(BundleError, match=r"no manifest.json in bundle directory"):
        load_bundle(tiny.dir)


def test_invalid_json(tiny):
    (tiny.dir / "manifest.json").write_text("{ this is not json")
    with pytest.raises(ManifestError, match=r"manifest.json: manifest is not valid JSON"):
        load_bundle(tiny.dir)


def test_unknown_manifest_version(tiny):
    data = json.loads((tiny.dir / "manifest.json").read_text())
    data["manifest_version"] = 7
    (tiny.dir / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestError, match=r"unsupported version 7; .*supports manifest_version \[1\]"):
        load_bundle(tiny.dir)


@pytest.mark.parametrize("verify", [True, False])
def test_missing_graph_file(tiny, verify):
    (tiny.dir / "head.onnx").unlink()
    with pytest.raises(BundleError, match=r"bundle file 'head.onnx' listed in manifest.json is missing"):
        load_bundle(tiny.dir, verify=verify)


def test_corrupted_graph_file(tiny):
    path = tiny.dir / "trunk.onnx"
    path.write_bytes(path.read_bytes()[:-5] + b"xxxxx")
    expected = tiny.manifest.files["trunk.onnx"][:12]
    actual = sha256_file(path)[:12]
    with pytest.raises(IntegrityError, match=rf"'trunk.onnx' .*expected {expected}\.\.\., actual {actual}\.\.\."):
        load_bundle(tiny.dir)
    assert load_bundle(tiny.dir, verify=False).manifest == tiny.manifest


def test_write_refuses_non_empty_dir(tiny):
    sources = {n: tiny.dir / n for n in ("trunk.onnx", "head.onnx")}
    other = tiny.dir.parent / "other"
    other.mkdir()
    (other / "keep.txt").write_text("precious")
    with pytest.raises(BundleError, match=r"is not empty; pass overwrite=True"):
        write_bundle(other, make_manifest(), sources)
    assert sorted(p.name for p in other.iterdir()) == ["keep.txt"]
    b = write_bundle(other, make_manifest(), sources, overwrite=True)
    assert load_bundle(other).manifest == b.manifest
    assert (other / "keep.txt").read_text() == "precious"


def test_write_in_place_overwrite(tiny):
    sources = {n: tiny.dir / n for n in ("trunk.onnx", "head.onnx")}
    b = write_bundle(tiny.dir, make_manifest(default_samples=4), sources, overwrite=True)
    assert load_bundle(tiny.dir).manifest.default_samples == 4 == b.manifest.default_samples


def test_write_validates_sources_before_touching_disk(tiny, tmp_path):
    dest = tmp_path / "new"
    with pytest.raises(BundleError, match=r"sources lack the head graph file 'head.onnx'"):
        write_bundle(dest, make_manifest(), {"trunk.onnx": tiny.dir / "trunk.onnx"})
    with pytest.raises(BundleError, match=r"source for bundle file 'head.onnx' does not exist"):
        write_bundle(dest, make_manifest(), {"trunk.onnx": tiny.dir / "trunk.onnx", "head.onnx": tmp_path / "no"})
    with pytest.raises(BundleError, match=r"must not include 'manifest.json'"):
        write_bundle(dest, make_manifest(), {"trunk.onnx": tiny.dir / "trunk.onnx",
                                             "head.onnx": tiny.dir / "head.onnx",
                                             "manifest.json": tiny.dir / "manifest.json"})
    with pytest.raises(ManifestError, match=r"sources\['/abs.onnx'\]: must be relative"):
        write_bundle(dest, make_manifest(), {"/abs.onnx": tiny.dir / "trunk.onnx"})
    assert not dest.exists()


def test_failed_write_leaves_no_manifest(tiny, tmp_path, monkeypatch):
    sources = {n: tiny.dir / n for n in ("trunk.onnx", "head.onnx")}

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_mod.os, "replace", boom)
    dest = tmp_path / "fresh"
    with pytest.raises(BundleError, match="disk full"):
        write_bundle(dest, make_manifest(), sources)
    assert not (dest / "manifest.json").exists()
    assert not [p for p in dest.iterdir() if p.name.startswith(".manifest-")]  # temp file cleaned up
    # overwriting an existing bundle and failing must not leave the old manifest behind
    with pytest.raises(BundleError, match="disk full"):
        write_bundle(tiny.dir, make_manifest(default_samples=3), sources, overwrite=True)
    assert not (tiny.dir / "manifest.json").exists()
    with pytest.raises(BundleError, match="no manifest.json"):
        load_bundle(tiny.dir)


def test_nested_extra_files(tiny, tmp_path):
    extra = tmp_path / "calib.npy"
    extra.write_bytes(b"\x00" * 10)
    sources = {"graphs/trunk.onnx": tiny.dir / "trunk.onnx", "graphs/head.onnx": tiny.dir / "head.onnx",
               "data/calib.npy": extra}
    m = make_manifest(trunk=GraphSpec("graphs/trunk.onnx", ("signal",), ("features",)),
                      head=GraphSpec("graphs/head.onnx", ("features", "mask_0"), ("logits",)))
    b = write_bundle(tmp_path / "nested", m, sources)
    assert set(b.manifest.files) == set(sources)
    assert load_bundle(tmp_path / "nested").manifest == b.manifest
