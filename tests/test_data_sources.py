"""One data-source resolver, forgiving labels, label maps, and the shared CLI data group."""
import json

import numpy as np
import pytest

from edgeuq.data import DataError, SignalRecord, load_signals, split_in_domain
from edgeuq.data.labels import LabelMapper, UnknownLabelsError, normalize_label, parse_label_map
from edgeuq.data.sources import (
    DATA_SOURCES, DataOptions, DataSource, load_records, register_data_source, relabel_records,
    resolve_data_source, training_splits,
)

CLASSES = ("normal", "inner_race", "outer_race", "ball")


def _npz(folder, labels, fs=1000.0, n=4000):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, lab in enumerate(labels):
        np.savez(folder / f"r{i}.npz", signal=rng.standard_normal(n), fs=fs, label=lab)
    return folder


def test_resolver_names_each_kind(tmp_path):
    cwru = tmp_path / "cwru"
    cwru.mkdir()
    (cwru / "MANIFEST.csv").write_text("file\n")
    (tmp_path / "t.tsv").write_text("a\t1\n")
    sig = _npz(tmp_path / "sig", ["normal"])
    assert resolve_data_source(cwru).name == "cwru"
    assert resolve_data_source(tmp_path / "t.tsv").name == "text"
    assert resolve_data_source(sig).name == "signals"
    assert resolve_data_source(sig / "r0.npz").name == "signals"
    assert resolve_data_source(None).name == "synthetic"
    assert list(DATA_SOURCES)[:4] == ["cwru", "text", "signals", "synthetic"]
    with pytest.raises(DataError, match="holds no vibration signals"):
        load_records(tmp_path / "t.tsv")
    with pytest.raises(ValueError, match="already registered"):
        register_data_source(DataSource("cwru", "again", lambda p: False))


@pytest.mark.parametrize("raw, want", [("InnerRace", "inner_race"), ("inner-race", "inner_race"),
                                       ("Inner Race", "inner_race"), ("INNER_RACE", "inner_race"),
                                       ("OuterRace6", "outer_race6"), ("ball", "ball"), (" Normal ", "normal"),
                                       ("HTTPError", "http_error")])
def test_normalize_label(raw, want):
    assert normalize_label(raw) == want


def test_label_maps_from_text_json_and_toml(tmp_path):
    assert parse_label_map("InnerRace=inner_race, Ball = ball,") == {"InnerRace": "inner_race", "Ball": "ball"}
    assert parse_label_map(None) == {} and parse_label_map("  ") == {}
    (tmp_path / "m.json").write_text(json.dumps({"IR": "inner_race"}))
    assert parse_label_map(str(tmp_path / "m.json")) == {"IR": "inner_race"}
    (tmp_path / "m.toml").write_text('[labels]\nIR = "inner_race"\n"B 7" = "ball"\n')
    assert parse_label_map(str(tmp_path / "m.toml")) == {"IR": "inner_race", "B 7": "ball"}
    for bad in ("IR", "IR=a=b", "=ball"):
        with pytest.raises(DataError, match="label map entry"):
            parse_label_map(bad)
    with pytest.raises(DataError, match="not found"):
        parse_label_map(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="table of label = class"):
        parse_label_map(str(tmp_path / "bad.json"))


def test_label_mapper_order_and_refusals():
    m = LabelMapper(CLASSES, {"IR": "inner_race", "b-7": "ball"})
    assert [m.resolve(x) for x in ("normal", "IR", "ir", "B_7", "OuterRace", "cracked", None)] == \
        ["normal", "inner_race", "inner_race", "ball", "outer_race", None, None]
    assert m.unknown(["cracked", "normal", "cracked", "zz"]) == ["cracked", "zz"]
    with pytest.raises(DataError, match=r"targets \['nope'\] are not classes"):
        LabelMapper(CLASSES, {"x": "nope"})


def test_relabel_records_keeps_signals_and_names_the_unknown():
    sig = np.arange(10, dtype=np.float32)
    recs = [SignalRecord(sig, 100.0, "InnerRace", {"record_id": "a"}), SignalRecord(sig, 100.0, "Cracked", {})]
    with pytest.raises(UnknownLabelsError, match=r"labels \['Cracked'\] are not among the classes") as info:
        relabel_records(recs, CLASSES)
    assert "allow_unknown" not in str(info.value) and info.value.labels == ("Cracked",)
    out = relabel_records(recs, CLASSES, allow_unknown=True)
    assert [r.label for r in out] == ["inner_race", None] and np.array_equal(out[0].signal, sig)
    assert out[0].meta["record_id"] == "a"
    assert [r.label for r in relabel_records(recs, CLASSES, {"Cracked": "ball"})] == ["inner_race", "ball"]


class _Recipe:
    data = {"window": 256, "hop": 128, "fs_hz": 1000.0, "classes": list(CLASSES)}


def test_training_splits_match_the_direct_path_and_accept_a_label_map(tmp_path):
    folder = _npz(tmp_path / "d", ["normal", "inner_race", "outer_race", "ball"])
    got = training_splits(folder, _Recipe())
    ref = split_in_domain(load_signals(folder, target_fs=1000.0), 256, 128, class_names=CLASSES, target_fs=1000.0)
    for a, b in ((got.train, ref.train), (got.val, ref.val), (got.test, ref.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    own = _npz(tmp_path / "own", ["healthy", "IR", "OR", "B"])
    with pytest.raises(UnknownLabelsError, match="healthy"):
        training_splits(own, _Recipe())
    mapped = training_splits(own, _Recipe(), DataOptions(label_map=parse_label_map(
        "healthy=normal,IR=inner_race,OR=outer_race,B=ball")))
    np.testing.assert_array_equal(mapped.train.y, got.train.y)
    np.testing.assert_array_equal(mapped.train.x, got.train.x)


def test_every_data_command_uses_the_shared_group():
    from edgeuq.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for cmd in ("train", "fisher", "quantize", "evaluate"):
        opts = {o for a in sub.choices[cmd]._actions for o in a.option_strings}
        assert {"--data", "--fs", "--key", "--label-map"} <= opts, cmd
        groups = [g.title for g in sub.choices[cmd]._action_groups]
        assert "data" in groups, cmd
