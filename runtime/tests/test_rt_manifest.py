"""Manifest: JSON layout, round trip and validation (every problem names its field)."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest

from edgeuq_runtime import GraphSpec, InputSpec, Manifest, ManifestError, NoiseSpec
from rt_helpers import make_manifest

SHA = "ab" * 32
FILES = {"trunk.onnx": SHA, "head.onnx": "cd" * 32}


def sealed(**overrides):
    return make_manifest(files=overrides.pop("files", FILES), **overrides)


def test_round_trip_and_stable_text():
    m = sealed()
    assert Manifest.from_json(m.to_json()) == m
    text = m.dumps()
    assert Manifest.loads(text) == m
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    data = json.loads(text)
    assert set(data) == {"format", "manifest_version", "model", "input", "classes", "default_samples", "noise",
                         "graphs", "backend", "files", "metadata"}
    assert data["format"] == "edgeuq-bundle" and data["manifest_version"] == 1
    assert data["model"] == {"name": "tiny-har", "version": "1.0.0"}
    assert data["input"] == {"name": "signal", "length": 16, "dtype": "float32", "sample_rate_hz": 50.0,
                             "normalization": "zscore"}
    assert data["classes"] == ["rest", "walk", "run"]
    assert data["noise"] == [{"name": "mask_0", "kind": "dropout_mask", "shape": [8], "params": {"p": 0.5}}]
    assert data["graphs"] == {"trunk": {"file": "trunk.onnx", "inputs": ["signal"], "outputs": ["features"]},
                              "head": {"file": "head.onnx", "inputs": ["features", "mask_0"],
                                       "outputs": ["logits"]},
                              "feature_name": "features", "logits_name": "logits"}
    assert data["files"] == FILES and data["metadata"]["metrics"] == {"acc": 0.5}


def test_draft_has_no_json_form():
    draft = make_manifest()
    assert draft.is_draft
    with pytest.raises(ManifestError, match="files: draft manifest"):
        draft.to_json()


def test_metadata_is_detached_from_caller():
    meta = {"metrics": {"acc": 0.9}}
    m = sealed(metadata=meta)
    meta["metrics"]["acc"] = 0.1
    assert m.metadata["metrics"]["acc"] == 0.9


@pytest.mark.parametrize("overrides, match", [
    (dict(class_names=("only",)), r"classes: needs at least 2"),
    (dict(class_names=("a", "b", "a")), r"classes: names must be unique.*'a'"),
    (dict(class_names="abc"), r"classes: must be a list"),
    (dict(default_samples=0), r"default_samples: must be an integer >= 1"),
    (dict(default_samples=2.5), r"default_samples"),
    (dict(model_name=""), r"model.name"),
    (dict(trunk=GraphSpec("trunk.onnx", ("x",), ("features",))), r"graphs.trunk.inputs: must be exactly \['signal'\]"),
    (dict(trunk=GraphSpec("trunk.onnx", ("signal",), ("feats",))), r"graphs.trunk.outputs: must contain"),
    (dict(head=GraphSpec("head.onnx", ("mask_0", "features"), ("logits",))), r"graphs.head.inputs: must be"),
    (dict(head=GraphSpec("head.onnx", ("features",), ("logits",))), r"graphs.head.inputs"),
    (dict(head=GraphSpec("head.onnx", ("features", "mask_0"), ("out",))), r"graphs.head.outputs: must contain"),
    (dict(files={"trunk.onnx": SHA}), r"files: graph file 'head.onnx' \(graphs.head.file\) is not listed"),
    (dict(files={**FILES, "/etc/passwd": SHA}), r"files\['/etc/passwd'\]: must be relative"),
    (dict(files={**FILES, "../up.bin": SHA}), r"files\['../up.bin'\]: must not contain '\.\.'"),
    (dict(files={**FILES, "C:/x.bin": SHA}), r"absolute"),
    (dict(files={"trunk.onnx": "abc", "head.onnx": SHA}), r"files\['trunk.onnx'\]: must be a sha256 digest of 64 hex"),
    (dict(files={"trunk.onnx": "zz" * 32, "head.onnx": SHA}), r"64 hex"),
    (dict(manifest_version=2), r"manifest_version: unsupported version 2; .*supports manifest_version \[1\]"),
    (dict(format="something-else"), r"format: must be 'edgeuq-bundle'"),
    (dict(metadata={"when": object()}), r"metadata: must be JSON-serialisable"),
    (dict(metadata={"x": float("nan")}), r"metadata"),
    (dict(noise=(NoiseSpec("mask_0", "dropout_mask", (8,), {"p": 0.5}),) * 2), r"noise: names must be unique"),
])
def test_constructor_rejects(overrides, match):
    with pytest.raises(ManifestError, match=match):
        sealed(**overrides)


@pytest.mark.parametrize("kwargs, match", [
    (dict(length=0, sample_rate_hz=50.0), r"input.length"),
    (dict(length=True, sample_rate_hz=50.0), r"input.length"),
    (dict(length=16, sample_rate_hz=-1.0), r"input.sample_rate_hz"),
    (dict(length=16, sample_rate_hz=50.0, normalization="minmax"), r"input.normalization: must be one of"),
    (dict(length=16, sample_rate_hz=50.0, dtype="int16"), r"input.dtype"),
    (dict(length=16, sample_rate_hz=50.0, name=""), r"input.name"),
])
def test_input_spec_rejects(kwargs, match):
    with pytest.raises(ManifestError, match=match):
        InputSpec(**kwargs)


@pytest.mark.parametrize("file", ["/abs/trunk.onnx", "../trunk.onnx", "a/../trunk.onnx", "a\\b.onnx", "./x.onnx", ""])
def test_graph_spec_rejects_unsafe_paths(file):
    with pytest.raises(ManifestError, match=r"^file: "):
        GraphSpec(file, ("a",), ("b",))


def _mutated(edit):
    data = copy.deepcopy(sealed().to_json())
    edit(data)
    return data


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("classes"), r"^classes: missing"),
    (lambda d: d["graphs"]["trunk"].pop("file"), r"^graphs.trunk.file: missing"),
    (lambda d: d["graphs"]["head"].update(file="/x.onnx"), r"^graphs.head.file: must be relative"),
    (lambda d: d["model"].pop("version"), r"^model.version: missing"),
    (lambda d: d["input"].pop("length"), r"^input.length: missing"),
    (lambda d: d.update(default_samples="16"), r"^default_samples: must be an integer"),
    (lambda d: d.update(manifest_version=99), r"supports manifest_version \[1\]"),
    (lambda d: d.pop("manifest_version"), r"unsupported version None"),
    (lambda d: d.update(format="onnx"), r"^format: "),
    (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda d: d.update(files={}), r"^files: must list every bundle file"),
    (lambda d: d.update(noise={"name": "mask_0"}), r"^noise: must be a list"),
    (lambda d: d["noise"][0].update(kind="laplace"), r"unknown kind 'laplace'"),
    (lambda d: d["noise"][0].pop("shape"), r"malformed noise entry"),
])
def test_from_json_rejects(edit, match):
    with pytest.raises(ManifestError, match=match):
        Manifest.from_json(_mutated(edit))


def test_loads_rejects_invalid_json_and_non_objects():
    with pytest.raises(ManifestError, match="not valid JSON"):
        Manifest.loads("{nope")
    with pytest.raises(ManifestError, match="manifest: must be a JSON object"):
        Manifest.loads("[1, 2]")


def test_replace_revalidates():
    m = sealed()
    with pytest.raises(ManifestError, match="default_samples"):
        dataclasses.replace(m, default_samples=-1)


def test_graph_backend_and_options_roundtrip():
    from edgeuq_runtime.manifest import GraphSpec

    g = GraphSpec(file="head.so", inputs=("features", "m"), outputs=("logits",), backend="tvm",
                  options={"device": "cuda"})
    again = GraphSpec.from_json(g.to_json())
    assert again == g and again.backend == "tvm" and again.options == {"device": "cuda"}
    assert "backend" not in GraphSpec(file="t.onnx", inputs=("a",), outputs=("b",)).to_json()
    with pytest.raises(ManifestError, match="graphs.head.*options"):
        GraphSpec.from_json({"file": "h", "inputs": ["a"], "outputs": ["b"], "options": [1]}, where="graphs.head")
