"""The shift suite: whole recordings held out by their metadata (and the assertion that catches a
leak), shifts skipped with a recorded reason when metadata is missing, an unknown label becoming an
unseen-fault-type shift, the device rule picked on validation never losing to its best part where
one part is pure noise (the old max-z combination loses there), and a tiny end-to-end run."""
import dataclasses
import json

import numpy as np
import pytest

from edgeuq.data import BEARING_CLASSES, SignalRecord, synthetic_records
from edgeuq.data.synthetic import SyntheticBearingConfig
from edgeuq.shifts import LeakError, ShiftProtocol, Skipped, assert_leak_free, build_protocol_data, build_sets
from edgeuq.shifts.protocol import windows_of
from edgeuq.shifts.suite import pick_rule
from edgeuq.uq import auroc
from edgeuq_runtime.conformal import combine_pvalues, conformal_pvalues

W = 512


@pytest.fixture(scope="module")
def records():
    cfg = SyntheticBearingConfig(duration_s=1.5, loads=(0.0, 1.0, 2.0), severities=(0.007, 0.014, 0.021),
                                 normal_records_per_load=1, seed=5)
    return synthetic_records(cfg)


def test_whole_recordings_held_out_by_metadata(records):
    data = build_protocol_data(records, BEARING_CLASSES, W, ShiftProtocol())
    # independent reference from the metadata: largest load, largest fault size
    exp_load = {r.record_id for r in records if r.meta["load_hp"] == 2.0 and r.meta["severity"] != 0.021}
    exp_size = {r.record_id for r in records if r.meta["severity"] == 0.021 and r.meta["load_hp"] != 2.0}
    assert {r.record_id for r in data.held["load"]} == exp_load
    assert {r.record_id for r in data.held["size"]} == exp_size
    train_side = {str(v) for k in ("train", "val", "cal", "test") for v in getattr(data, k).meta["record"]}
    assert train_side == {r.record_id for r in records if r.meta["load_hp"] != 2.0 and r.meta["severity"] != 0.021}
    assert not train_side & (exp_load | exp_size)
    assert_leak_free(data)
    sets = build_sets(data)
    names = [s.name for s in sets]
    assert "load 2 (whole records)" in names and "fault size 0.021 (whole records)" in names
    load_set = next(s for s in sets if s.name.startswith("load 2"))
    assert set(load_set.records) == exp_load


def test_leaks_are_caught(records):
    data = build_protocol_data(records, BEARING_CLASSES, W, ShiftProtocol())
    held = data.held["load"][0]
    leaky = windows_of([(held, 0, len(held))], W, W, BEARING_CLASSES, data.fs)
    with pytest.raises(LeakError, match="held-out"):
        assert_leak_free(dataclasses.replace(data, test=data.test.concat(leaky)))
    # a cal window that reaches back into the training segment of its record
    r0 = data.train_records[0]
    tr = data.train.meta["start"][data.train.meta["record"] == r0.record_id].max()
    overlap = windows_of([(r0, int(tr) + W // 2, int(tr) + W // 2 + W)], W, W, BEARING_CLASSES, data.fs)
    with pytest.raises(LeakError, match="share samples"):
        assert_leak_free(dataclasses.replace(data, cal=data.cal.concat(overlap)))
    with pytest.raises(LeakError, match="identical to training windows"):
        assert_leak_free(data, {"copy": data.train.subset(np.arange(3))})


def test_missing_metadata_skips_with_reason(records):
    bare = [SignalRecord(r.signal, r.fs, r.label, {"record_id": r.record_id}) for r in records]
    data = build_protocol_data(bare, BEARING_CLASSES, W)
    assert "load" not in data.held and "size" not in data.held
    assert "load_hp" in data.skipped["load"] and "severity" in data.skipped["size"]
    skipped = {s.name: s.reason for s in build_sets(data) if isinstance(s, Skipped)}
    assert "load_hp" in skipped["held-out load"] and "severity" in skipped["held-out fault size"]
    assert "other sensor channel" in skipped


def test_label_outside_the_classes_is_an_unseen_fault_type(records):
    classes = ("normal", "inner_race", "outer_race")
    data = build_protocol_data(records, classes, W)
    assert data.held_values["type"] == ["ball"]
    assert {r.label for r in data.held["type"]} == {"ball"}
    assert not {r.record_id for r in data.held["type"]} & {r.record_id for r in data.train_records}
    s = next(s for s in build_sets(data) if s.name.startswith("fault type ball"))
    assert s.kind == "flag" and np.all(s.y == -1)


def test_picked_rule_never_loses_to_its_best_part_where_one_part_is_noise():
    """density informative, MI weakly, total entropy pure noise (same law in and out): the rule
    picked on validation data is within a small epsilon of the best single part on fresh test data,
    while the old max-z combination (and an unselected min over all parts) lose to it."""
    parts = ("epistemic", "total", "density")
    for seed in range(3):
        rng = np.random.default_rng(seed)

        def draw(n, ood):
            return {"density": rng.normal(1.5 if ood else 0.0, 1, n), "epistemic": rng.normal(0.6 if ood else 0, 1, n),
                    "total": rng.normal(0, 1, n)}

        cal, vi, vo, ti, to = draw(500, False), draw(1000, False), draw(1000, True), draw(3000, False), draw(3000, True)

        def pv(d):
            return {k: conformal_pvalues(cal[k], d[k]) for k in parts}

        pick = pick_rule(pv(vi), pv(vo), parts)
        chosen, rule, table = pick.parts, pick.rule, pick.table
        # on validation the pick is at least its best single part, exactly
        best_val = max(t["auroc"] for t in table if len(t["parts"]) == 1)
        assert max(t["auroc"] for t in table) >= best_val
        assert next(t for t in table if t["parts"] == list(chosen) and t["rule"] == rule)["auroc"] >= best_val

        def score(d, sub, r):
            return -np.log(combine_pvalues(np.stack([pv(d)[p] for p in sub], 1), r))

        best = max(auroc(ti[k], to[k]) for k in parts)
        assert auroc(score(ti, chosen, rule), score(to, chosen, rule)) >= best - 0.01
        assert "total" not in chosen

        def maxz(d):
            return np.max(np.stack([(d[k] - cal[k].mean()) / cal[k].std() for k in parts], 1), 1)

        assert auroc(maxz(ti), maxz(to)) < best - 0.03
        assert auroc(score(ti, parts, "min"), score(to, parts, "min")) < best - 0.03


def test_tiny_end_to_end(tmp_path, records):
    import torch

    from edgeuq.bundle import build_bundle
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig
    from edgeuq.pipeline import train_stage
    from edgeuq.shifts import SetOptions, SuiteOptions, run_suite, suite_tables
    from edgeuq.training import TrainConfig
    from edgeuq_runtime import load_bundle
    from edgeuq_runtime.preprocess import zscore_windows

    from edgeuq.data import Splits, WindowDataset

    torch.set_num_threads(1)
    proto = ShiftProtocol(max_eval_windows=60)
    data = build_protocol_data(records, BEARING_CLASSES, W, proto)

    def z(ds):
        return WindowDataset(zscore_windows(ds.x), ds.y, ds.class_names, ds.fs, ds.meta)

    sp = Splits(z(data.train), z(data.val), z(data.test))
    cfg = ModelConfig.from_dict({"patch": 32, "d_model": 16, "heads": 2, "depth": 1, "ffn": 32, "dropout": 0.2,
                                 "stochastic_blocks": [], "stochastic_head": True}, input_length=W, num_classes=4)
    ck = train_stage(sp, cfg, TrainConfig.from_dict({"epochs": 2, "batch_size": 32, "lr": 3e-3, "seed": 0}),
                     tmp_path / "ck", progress=False)
    b = build_bundle(export_onnx(ck, tmp_path / "onnx", verify=True), tmp_path / "b", "tiny", "0.0.1",
                     default_samples=4, overwrite=True)
    opts = SetOptions(snr_db=(10.0,), gains=(2.0,), geometries=((7, 0.45, 1.8),), other_rpm=(1500.0,),
                      synthetic_seconds=0.5)
    doc = run_suite([("tiny", b.root)], records, tmp_path / "suite", proto, opts, SuiteOptions(samples=4),
                    log=lambda m: None)
    m = doc["models"][0]
    json.dumps(doc)  # JSON-ready
    rule = m["device_rule"]
    pv = load_bundle(tmp_path / "suite" / "tiny" / "bundle").manifest.sections["calibration"].pvalues
    assert list(pv.parts) == rule["parts"] and pv.rule == rule["rule"]        # the device runs what was picked
    assert m["density_fit"]["overlap"] == 0 and m["density_fit"]["n"] == len(data.train)
    shifts = {r["shift"] for r in m["flag"]}
    assert {"fault size 0.021 (whole records)", "dead sensor (flat)"} <= shifts
    flat = next(r for r in m["flag"] if r["shift"] == "dead sensor (flat)")
    assert flat["abstain"] == 1.0 and flat["reasons"]["flatline_input"] == flat["n"]   # quality flags abstain
    assert not any(r["shift"].startswith("validation") for r in m["flag"] + m["generalise"])
    for r in m["flag"]:
        for k in ("mi", "total", "density", "maxz", "min_p", "fisher_p", "device"):
            assert 0.0 <= r[f"auroc_{k}"] <= 1.0
    t = suite_tables(doc)
    assert t["flag"]["rows"] and t["generalise"]["rows"][0][1].startswith("in-distribution")


def test_cli_on_signal_files_without_metadata(tmp_path, records, capsys):
    """`edgeuq shifts` on plain .npz files: no load/size metadata, so those shifts are skipped with
    the reason printed and written, the rest run."""
    import torch

    from edgeuq.bundle import build_bundle
    from edgeuq.cli import main
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig
    from edgeuq.training import save_checkpoint

    torch.manual_seed(0)
    from edgeuq.models import build_model

    cfg = ModelConfig.from_dict({"patch": 32, "d_model": 8, "heads": 2, "depth": 1, "ffn": 16, "dropout": 0.2,
                                 "stochastic_blocks": [], "stochastic_head": True}, input_length=W, num_classes=4)
    ck = save_checkpoint(build_model(cfg), tmp_path / "ck", BEARING_CLASSES, records[0].fs, "zscore")
    b = build_bundle(export_onnx(ck, tmp_path / "onnx", verify=True), tmp_path / "b", "untrained", "0.0.1",
                     default_samples=4, overwrite=True)
    data = tmp_path / "data"
    data.mkdir()
    picked = [r for c in BEARING_CLASSES for r in [q for q in records if q.label == c][:3]]
    for i, r in enumerate(picked):
        np.savez(data / f"r{i:02d}.npz", signal=r.signal, fs=r.fs, label=r.label)
    out = tmp_path / "out.json"
    assert main(["shifts", "--bundle", f"untrained={b.root}", "--data", str(data), "--samples", "4",
                 "--max-windows", "24", "--work", str(tmp_path / "w"), "--json", str(out), "--no-progress"]) == 0
    doc = json.loads(out.read_text())
    skipped = {s["shift"]: s["reason"] for s in doc["models"][0]["skipped"]}
    assert "load_hp" in skipped["held-out load"] and "severity" in skipped["held-out fault size"]
    assert "skipped" in capsys.readouterr().out
