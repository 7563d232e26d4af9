"""The order-tracking front end on the host: recipe options (strict), windowing through the runtime's
own function, host == device (a tiny exported model: the host windows through PyTorch vs raw windows
through the bundle's runtime with its `preprocessing` section), and the speed estimator on the
physics-based generator's records of known speed."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeuq.bundle.build import write_artifact_bundle
from edgeuq.data import BEARING_CLASSES, DataError, window_records
from edgeuq.data.synthetic import SyntheticBearingConfig, synthetic_records
from edgeuq.data.windowing import front_end_from_recipe
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.training import save_checkpoint
from edgeuq_runtime import UncertaintyRuntime
from edgeuq_runtime.front_end import OrderFrontEnd
from edgeuq_runtime.preprocess import estimate_shaft_hz

FS = 12000.0
DATA = {"fs_hz": FS, "window": 512, "hop": 512}


def _records():
    cfg = SyntheticBearingConfig(fs=FS, duration_s=0.5, loads=(0.0, 3.0), severities=(0.014,),
                                 normal_records_per_load=1, seed=3)
    return synthetic_records(cfg)


def test_recipe_options_are_strict():
    assert front_end_from_recipe(DATA) is None
    assert front_end_from_recipe({**DATA, "front_end": "none"}) is None
    fe = front_end_from_recipe({**DATA, "front_end": "order", "front_end_rpm": [1600, 2000]})
    assert fe == OrderFrontEnd(samples_per_rev=450, rpm_min=1600.0, rpm_max=2000.0, harmonics=16)
    for bad, match in [({"front_end": "orders"}, "front_end must be"),
                       ({"front_end": "order"}, "front_end_rpm"),
                       ({"front_end": "order", "front_end_rpm": [2000, 1600]}, "rpm_max"),
                       ({"front_end": "order", "front_end_rpm": [1600, 2000], "front_end_speed": "x"}, "unknown"),
                       ({"front_end_rpm": [1600, 2000]}, "front_end is \"none\""),
                       ({"front_end": "order", "front_end_rpm": [1600, 2000], "front_end_harmonics": 400}, "harmonics")]:
        with pytest.raises(DataError, match=match):
            front_end_from_recipe({**DATA, **bad})


def _tiny_export(tmp_path):
    torch.manual_seed(0)
    cfg = ModelConfig(input_length=512, num_classes=4, patch=32, d_model=16, heads=2, depth=1, ffn=16,
                      stochastic_blocks=(), dropout=0.1)
    model = SignalTransformer(cfg).eval()
    ck = save_checkpoint(model, tmp_path / "ck", BEARING_CLASSES, FS)
    return model, export_onnx(ck, tmp_path / "onnx")


def test_a_recipe_front_end_reaches_the_bundle_manifest(tmp_path):
    from dataclasses import replace

    from edgeuq.catalog import get_recipe
    from edgeuq.pipeline import bundle_stage
    from edgeuq_runtime import load_bundle
    from edgeuq_runtime.front_end import front_end_of

    _, art = _tiny_export(tmp_path)
    rec = get_recipe("bearing-demo")
    with_fe = replace(rec, data={**rec.data, "fs_hz": FS, "front_end": "order", "front_end_rpm": [1600, 2000]})
    b = bundle_stage(art, tmp_path / "b1", with_fe, samples=4)
    assert front_end_of(load_bundle(b.root).manifest) == front_end_from_recipe(with_fe.data)
    b0 = bundle_stage(art, tmp_path / "b0", rec, samples=4)
    assert front_end_of(load_bundle(b0.root).manifest) is None


def test_host_windows_and_device_runtime_agree(tmp_path):
    fe = front_end_from_recipe({**DATA, "front_end": "order", "front_end_rpm": [1600, 2000]})
    recs = _records()
    host = window_records(recs, 512, 512, front_end=fe)           # what training sees
    plain = window_records(recs, 512, 512)
    raw = window_records(recs, 512, 512, normalize=False)
    rpm = np.array([next(r for r in recs if r.record_id == rid).meta["rpm"] for rid in raw.meta["record"]])
    assert np.max(np.abs(host.x - plain.x)) > 0.1                  # the front end changed the windows
    model, art = _tiny_export(tmp_path)
    write_artifact_bundle(art, tmp_path / "b", "fe", "0.1.0", sections={"preprocessing": fe})
    rt = UncertaintyRuntime(tmp_path / "b", seed=0)
    device = rt.trunk_features(raw.x, rpm=rpm)
    with torch.no_grad():
        ref = model.trunk(torch.from_numpy(host.x)).numpy()
    err = float(np.max(np.abs(device - ref)))
    assert err <= 1e-4, err


def test_speed_estimate_on_generated_records_of_known_speed():
    """1-s stretches of the generator's records: only two weak shaft lines (1x, 2x) under the impacts
    and noise, so the bound is looser than on a machine with many shaft harmonics (the runtime test);
    a broken estimator errs by ~10 % over this 1600-2000 rpm range (measured: median 0.9 %, max 2.5 %)."""
    cfg = SyntheticBearingConfig(fs=FS, duration_s=1.0, loads=(0.0, 1.0, 2.0, 3.0), severities=(0.014,),
                                 normal_records_per_load=1, seed=5)
    recs = synthetic_records(cfg)
    x = np.stack([r.signal for r in recs])
    true = np.array([r.meta["rpm"] for r in recs])
    est = estimate_shaft_hz(x, FS, 1600, 2000, harmonics=2) * 60
    err = np.abs(est / true - 1)
    assert np.median(err) <= 1.5e-2 and np.max(err) <= 4e-2, (np.median(err), np.max(err))
