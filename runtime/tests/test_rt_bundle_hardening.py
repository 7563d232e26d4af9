"""Regression tests for issue 9, bundles: symlinks and paths outside the bundle, strict manifest
parsing (size, depth, integers, types: nothing coerced), load-time checks against the graphs,
the bundle identity, optional manifest sections, and the pynq descriptor."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil

import numpy as np
import pytest

from edgeuq_runtime import (EXECUTORS, BackendError, BundleError, IntegrityError, Manifest, ManifestError, NoiseSpec,
                            UncertaintyRuntime, load_bundle, register_executor, register_manifest_section,
                            write_bundle)
from edgeuq_runtime.executors.pynq import HeadDescriptor, read_descriptor
from edgeuq_runtime.manifest import MANIFEST_SECTIONS, MAX_MANIFEST_BYTES
from rt_helpers import F, make_manifest

pytestmark = pytest.mark.filterwarnings("error")


def _rewrite(tiny, edit):
    """Apply ``edit`` to the manifest JSON of ``tiny`` and write it back (files unchanged)."""
    data = json.loads((tiny.dir / "manifest.json").read_text())
    edit(data)
    (tiny.dir / "manifest.json").write_text(json.dumps(data))


# ------------------------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("verify", [True, False])
def test_symlinked_graph_is_refused_even_with_a_matching_hash(tiny, tmp_path, verify):
    outside = tmp_path / "elsewhere.onnx"
    shutil.copyfile(tiny.dir / "head.onnx", outside)  # same bytes: the hash would match
    (tiny.dir / "head.onnx").unlink()
    os.symlink(outside, tiny.dir / "head.onnx")
    with pytest.raises(BundleError, match=r"'head.onnx'.*symbolic link"):
        load_bundle(tiny.dir, verify=verify)
    with pytest.raises(BundleError, match=r"symbolic link"):
        UncertaintyRuntime(tiny.dir, verify=verify)


def test_symlinked_directory_and_manifest_are_refused(tiny, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    sources = {"g/trunk.onnx": tiny.dir / "trunk.onnx", "g/head.onnx": tiny.dir / "head.onnx"}
    from edgeuq_runtime import GraphSpec

    m = make_manifest(trunk=GraphSpec("g/trunk.onnx", ("signal",), ("features",)),
                      head=GraphSpec("g/head.onnx", ("features", "mask_0"), ("logits",)))
    b = write_bundle(tmp_path / "nested", m, sources)
    shutil.move(str(b.root / "g"), str(real / "g"))
    os.symlink(real / "g", b.root / "g")
    with pytest.raises(BundleError, match=r"symbolic link"):
        load_bundle(b.root, verify=False)
    # a manifest that is itself a link
    other = tmp_path / "linked"
    other.mkdir()
    for n in ("trunk.onnx", "head.onnx"):
        shutil.copyfile(tiny.dir / n, other / n)
    os.symlink(tiny.dir / "manifest.json", other / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest.json.*symbolic link"):
        load_bundle(other)


def test_listed_fifo_is_refused_without_hanging(tiny):
    (tiny.dir / "head.onnx").unlink()
    os.mkfifo(tiny.dir / "head.onnx")
    for verify in (True, False):
        with pytest.raises(BundleError, match=r"'head.onnx' listed in manifest.json is not a regular file"):
            load_bundle(tiny.dir, verify=verify)


def test_write_bundle_does_not_write_through_a_symlink(tiny, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    os.symlink(victim, tiny.dir / "extra.bin")
    src = tmp_path / "extra-src.bin"
    src.write_bytes(b"payload")
    sources = {"trunk.onnx": tiny.dir / "trunk.onnx", "head.onnx": tiny.dir / "head.onnx", "extra.bin": src}
    with pytest.raises(BundleError, match=r"symbolic link"):
        write_bundle(tiny.dir, make_manifest(), sources, overwrite=True)
    assert victim.read_text() == "precious"


# ------------------------------------------------------------------------------------------- strict manifest


@pytest.mark.parametrize("text, match", [
    ("[" * 1000 + "]" * 1000, r"nests JSON 1000 levels deep"),
    ('{"a": ' * 40 + "1" + "}" * 40, r"nests JSON 40 levels deep"),
    ('{"format": "edgeuq-bundle", "manifest_version": ' + "9" * 5000 + "}", r"integer of 5000 digits"),
    ('{"x": NaN}', r"NaN"),
    ('{"x": Infinity}', r"Infinity"),
    ('{"x": -Infinity}', r"Infinity"),
    ('{"x": 1e400}', r"overflows a float"),
    ('{"a": 1, "a": 2}', r"repeats the key 'a'"),
    ('{"a": "\\ud800"}', r"manifest"),
])
def test_hostile_json_is_a_manifest_error(tiny, text, match):
    (tiny.dir / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=match):
        load_bundle(tiny.dir)


def test_oversized_manifest_is_refused_without_reading_it_all(tiny):
    with open(tiny.dir / "manifest.json", "w") as fh:
        fh.write('{"pad": "' + "x" * (MAX_MANIFEST_BYTES + 10) + '"}')
    with pytest.raises(ManifestError, match=r"larger than 4194304 bytes"):
        load_bundle(tiny.dir)


def test_non_utf8_manifest(tiny):
    (tiny.dir / "manifest.json").write_bytes(b'{"format": "\xff\xfe"}')
    with pytest.raises(ManifestError, match=r"not UTF-8"):
        load_bundle(tiny.dir)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(manifest_version=[1]), r"manifest_version: unsupported version \[1\]"),
    (lambda d: d.update(manifest_version={"v": 1}), r"manifest_version: unsupported version"),
    (lambda d: d.update(manifest_version=1.0), r"manifest_version: unsupported version 1.0"),
    (lambda d: d.update(manifest_version=True), r"manifest_version"),
    (lambda d: d.update(format=["edgeuq-bundle"]), r"^.*format: must be 'edgeuq-bundle'"),
    (lambda d: d["noise"][0].update(shape=["abc"]), r"noise\[0\]: noise 'mask_0'.shape: every axis must be an integer"),
    (lambda d: d["noise"][0].update(shape=[64.5]), r"shape: every axis must be an integer, got 64.5"),
    (lambda d: d["noise"][0].update(shape=[8.0]), r"shape: every axis must be an integer, got 8.0"),
    (lambda d: d["noise"][0].update(shape=["64", "64"]), r"every axis must be an integer, got '64'"),
    (lambda d: d["noise"][0].update(shape=[True]), r"every axis must be an integer"),
    (lambda d: d["noise"][0].update(shape=[2 ** 40]), r"axis outside"),
    (lambda d: d["noise"][0].update(shape=[4096, 4096, 4096]), r"axis outside|more than"),
    (lambda d: d["noise"][0].update(shape="8"), r"shape: must be a list of integers"),
    (lambda d: d["noise"][0].update(params={"p": "abc"}), r"params.p: dropout_mask needs a number"),
    (lambda d: d["noise"][0].update(params={"p": "0.1"}), r"params.p: dropout_mask needs a number"),
    (lambda d: d["noise"][0].update(params={"p": True}), r"params.p"),
    (lambda d: d["noise"][0].update(params={"p": 1.0}), r"params.p"),
    (lambda d: d["noise"][0].update(params="ab"), r"params: must be an object"),
    (lambda d: d["noise"][0].update(params={"p": 0.5, "q": 1}), r"params: unknown keys \['q'\]"),
    (lambda d: d["noise"][0].update(extra=1), r"noise\[0\]: malformed noise entry: unknown keys \['extra'\]"),
    (lambda d: d["noise"][0].update(kind=["dropout_mask"]), r"kind: unknown kind"),
    (lambda d: d["noise"][0].update(name=7), r"noise input needs a non-empty name"),
    (lambda d: d.update(noise=["mask_0"]), r"noise\[0\]: malformed noise entry: must be an object"),
    (lambda d: d.update(default_samples=16.0), r"default_samples: must be an integer >= 1, got 16.0"),
    (lambda d: d.update(default_samples="16"), r"default_samples"),
    (lambda d: d.update(default_samples=10 ** 18), r"default_samples: must be an integer <= 4096"),
    (lambda d: d["input"].update(length=16.0), r"input.length"),
    (lambda d: d["input"].update(length=[16]), r"input.length"),
    (lambda d: d["input"].update(normalization={"z": 1}), r"input.normalization: must be one of"),
    (lambda d: d["input"].update(dtype=["float32"]), r"input.dtype"),
    (lambda d: d["input"].update(sample_rate_hz="50"), r"input.sample_rate_hz"),
    (lambda d: d.update(classes=[1, 2, 3]), r"classes\[0\]: must be a non-empty string"),
    (lambda d: d.update(classes="abc"), r"classes: must be a list"),
    (lambda d: d["model"].update(name={"x": 1}), r"model.name"),
    (lambda d: d.update(metadata=[1, 2]), r"metadata: must be a JSON object"),
    (lambda d: d["graphs"]["head"].update(options=[1]), r"graphs.head.options"),
    (lambda d: d["graphs"]["head"].update(backend=7), r"graphs.head.backend"),
    (lambda d: d["graphs"].update(feature_name=["features"]), r"graphs.feature_name"),
    (lambda d: d["files"].update({"x\u0000y": "ab" * 32}), r"printable characters"),
    (lambda d: d["files"].update({"manifest.json": "ab" * 32}), r"must not list 'manifest.json'"),
    (lambda d: d.update(calibration_typo={}), r"unknown keys \['calibration_typo'\]"),
])
def test_every_field_is_type_checked_strictly(tiny, edit, match):
    _rewrite(tiny, edit)
    with pytest.raises(ManifestError, match=match):
        load_bundle(tiny.dir)


# ------------------------------------------------------------------------------------------- load-time checks


def test_class_count_differing_from_the_graph_is_found_at_load(build_bundle):
    b = build_bundle(class_names=("a", "b", "c", "d"))  # the head graph has 3 logits
    with pytest.raises(ManifestError, match=r"classes lists 4 names"):
        UncertaintyRuntime(b.dir)


def test_logits_dimension_is_checked_by_running_when_not_static(tmp_path):
    """A head whose logits axis is dynamic is still checked at load: one row is run."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from rt_helpers import L, make_trunk

    rng = np.random.default_rng(0)
    src = tmp_path / "src"
    src.mkdir()
    vi = helper.make_tensor_value_info
    head = helper.make_graph(
        [helper.make_node("Mul", ["features", "mask_0"], ["m"]), helper.make_node("MatMul", ["m", "V"], ["logits"])],
        "head", [vi("features", TensorProto.FLOAT, ["N", F]), vi("mask_0", TensorProto.FLOAT, ["N", F])],
        [vi("logits", TensorProto.FLOAT, ["N", "C"])],
        initializer=[numpy_helper.from_array(rng.standard_normal((F, 5)).astype(np.float32), "V")])
    model = helper.make_model(head, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(src / "head.onnx"))
    make_trunk(src / "trunk.onnx", rng.standard_normal((L, F)).astype(np.float32))
    sources = {"trunk.onnx": src / "trunk.onnx", "head.onnx": src / "head.onnx"}
    b = write_bundle(tmp_path / "b", make_manifest(), sources)
    with pytest.raises(ManifestError, match=r"declares 'logits' of shape \[None, 5\].*classes lists 3 names"):
        UncertaintyRuntime(b.root)  # the shape the graph declares

    @register_executor("ort-without-shapes-test")
    def load(path, threads, options):  # a backend that declares nothing (like a compiled library)
        g = EXECUTORS["onnxruntime"](path, threads, options)
        g.output_shapes = {}
        return g

    try:
        from edgeuq_runtime import GraphSpec

        m = make_manifest(head=GraphSpec("head.onnx", ("features", "mask_0"), ("logits",),
                                         backend="ort-without-shapes-test"))
        b = write_bundle(tmp_path / "c", m, sources)
        with pytest.raises(ManifestError, match=r"returns 'logits' of shape \[1, 5\] for one row, but manifest.json "
                                                r"classes lists 3 names"):
            UncertaintyRuntime(b.root)  # found by running one row
    finally:
        EXECUTORS.pop("ort-without-shapes-test", None)


def test_noise_shape_checked_even_without_static_shapes(build_bundle):
    b = build_bundle(noise=(NoiseSpec("mask_0", "dropout_mask", (F + 1,), {"p": 0.5}),))
    with pytest.raises(ManifestError, match=r"mask_0"):
        UncertaintyRuntime(b.dir)


# ------------------------------------------------------------------------------------------- identity


def test_reordered_classes_after_rehash_change_the_identity(tiny):
    before = load_bundle(tiny.dir).digest
    _rewrite(tiny, lambda d: d.update(classes=list(reversed(d["classes"]))))
    after = load_bundle(tiny.dir)
    assert after.digest != before
    assert after.digest == hashlib.sha256((tiny.dir / "manifest.json").read_bytes()).hexdigest()
    assert UncertaintyRuntime(tiny.dir).bundle_digest == after.digest


def test_write_bundle_reports_the_digest_it_wrote(tiny):
    assert load_bundle(tiny.dir).digest == write_bundle(
        tiny.dir, make_manifest(), {n: tiny.dir / n for n in ("trunk.onnx", "head.onnx")}, overwrite=True).digest


def test_integrity_still_checked(tiny):
    p = tiny.dir / "head.onnx"
    p.write_bytes(p.read_bytes() + b"\x00")
    with pytest.raises(IntegrityError):
        UncertaintyRuntime(tiny.dir)


# ------------------------------------------------------------------------------------------- sections


@pytest.fixture
def section():
    key = "test_section_x"

    def parse(obj, where):
        if not isinstance(obj, dict) or set(obj) != {"level"} or type(obj["level"]) is not int:
            raise ManifestError(f"{where}: must be {{'level': int}}, got {obj!r}")
        return ("parsed", obj["level"])

    def to_json(value):
        return {"level": value[1]}

    register_manifest_section(key, parse, to_json)
    yield key
    MANIFEST_SECTIONS.pop(key, None)


def test_registered_section_round_trips_through_write_and_load(tiny, section):
    m = make_manifest(sections={section: ("parsed", 3)})
    b = write_bundle(tiny.dir, m, {n: tiny.dir / n for n in ("trunk.onnx", "head.onnx")}, overwrite=True)
    data = json.loads((tiny.dir / "manifest.json").read_text())
    assert data[section] == {"level": 3}
    loaded = load_bundle(tiny.dir)
    assert loaded.manifest.sections == {section: ("parsed", 3)} and loaded.manifest == b.manifest
    _rewrite(tiny, lambda d: d.update({section: {"level": "3"}}))
    with pytest.raises(ManifestError, match=r"test_section_x: must be"):
        load_bundle(tiny.dir)


def test_unregistered_section_is_an_unknown_key(tiny, section):
    MANIFEST_SECTIONS.pop(section)
    _rewrite(tiny, lambda d: d.update({section: {"level": 3}}))
    with pytest.raises(ManifestError, match=r"unknown keys \['test_section_x'\]"):
        load_bundle(tiny.dir)
    with pytest.raises(ManifestError, match=r"unknown manifest section"):
        make_manifest(sections={section: 1})


def test_section_parser_bug_is_still_a_manifest_error(tiny):
    register_manifest_section("test_buggy", lambda obj, where: obj["missing"], lambda v: v)
    try:
        _rewrite(tiny, lambda d: d.update(test_buggy={}))
        with pytest.raises(ManifestError, match=r"test_buggy: malformed section \(KeyError"):
            load_bundle(tiny.dir)
    finally:
        MANIFEST_SECTIONS.pop("test_buggy", None)


def test_section_keys_cannot_shadow_core_fields():
    with pytest.raises(ValueError):
        register_manifest_section("classes", lambda o, w: o, lambda v: v)


# ------------------------------------------------------------------------------------------- pynq descriptor


GOOD_DESC = {"format": "edgeuq-pynq-head", "version": 1,
             "inputs": [{"name": "features", "size": 4}, {"name": "mask", "size": 4}],
             "outputs": [{"name": "logits", "size": 2}],
             "stream": {"dtype": "float32", "words_in": 8, "words_out": 2},
             "bitfile": "toy.bit", "dma": "hier_0/axi_dma_0"}


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.update(stream=[1, 2]), r"stream: must be a JSON object, got list"),
    (lambda d: d.update(stream="x"), r"stream: must be a JSON object, got str"),
    (lambda d: d["stream"].update(words_in=8.0), r"stream\.words_in: must be an integer"),
    (lambda d: d["stream"].update(words_in="8"), r"stream\.words_in: must be an integer"),
    (lambda d: d["inputs"][0].update(size=4.5), r"inputs\[0\]\.size: must be an integer"),
    (lambda d: d["inputs"][0].update(size=True), r"inputs\[0\]\.size: must be an integer"),
    (lambda d: d["inputs"][0].update(name=3), r"inputs\[0\]\.name: must be a non-empty string"),
    (lambda d: d.update(inputs={"name": "x"}), r"inputs: must be a non-empty list"),
    (lambda d: d.update(outputs=[]), r"outputs: must be a non-empty list"),
    (lambda d: d.update(bitfile=["a.bit"]), r"bitfile: must be a non-empty string"),
    (lambda d: d.update(version=1.0), r"version: must be an integer"),
    (lambda d: d["inputs"].append({"name": "mask", "size": 1}), r"unique|stream widths"),
])
def test_pynq_descriptor_is_type_checked(tmp_path, edit, match):
    d = copy.deepcopy(GOOD_DESC)
    edit(d)
    path = tmp_path / "head.fpga.json"
    path.write_text(json.dumps(d))
    with pytest.raises(BackendError, match=match):
        read_descriptor(path)
    assert HeadDescriptor(path, GOOD_DESC).words_in == 8


def test_pynq_descriptor_hostile_json(tmp_path):
    path = tmp_path / "head.fpga.json"
    path.write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(BackendError, match=r"levels deep"):
        read_descriptor(path)
    path.write_text('{"version": ' + "1" * 5000 + "}")
    with pytest.raises(BackendError, match=r"digits"):
        read_descriptor(path)


def test_manifest_from_json_directly_is_strict():
    data = json.loads(make_manifest(files={"trunk.onnx": "ab" * 32, "head.onnx": "cd" * 32}).dumps())
    data["noise"][0]["shape"] = [8.0]
    with pytest.raises(ManifestError, match=r"every axis must be an integer"):
        Manifest.from_json(data)


def test_executor_files_resolve_with_a_relative_bundle_path(tiny, monkeypatch):
    """Files an executor names are located like the bundle itself (a relative bundle path works)."""
    from edgeuq_runtime.session import _inside

    monkeypatch.chdir(tiny.dir.parent)
    rel_root = tiny.dir.name
    assert _inside(rel_root, os.path.join(rel_root, "sub", "k.cubin"), "file") == "sub/k.cubin"
    assert _inside(tiny.dir, tiny.dir / "k.cubin", "file") == "k.cubin"
    for outside in (os.path.join(rel_root, "..", "x.bin"), "/etc/passwd", rel_root):
        with pytest.raises(BundleError, match="outside the bundle"):
            _inside(rel_root, outside, "file")
