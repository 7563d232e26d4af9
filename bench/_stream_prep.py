"""Data and model preparation for bench/stream.py (CWRU model trained once, cached in the work dir)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Tuple

HELD_LOAD = 3.0
UNSEEN_SIZE = 0.021


def cwru_sets(cwru_dir: Path, window: int = 2048, hop: int = 1024, eval_hop: int = 2048) -> Dict[str, Tuple]:
    """Training loads 0-2 hp without fault size 0.021 in: train / val (time-disjoint tail of each record);
    held-out load 3 hp (same faults, new load); unseen fault size 0.021 in (OOD)."""
    from edgeuq.data import BEARING_CLASSES, load_cwru, split_by_load, window_records

    records = load_cwru(cwru_dir)
    unseen = [r for r in records if abs(float(r.meta["severity"]) - UNSEEN_SIZE) < 1e-6]
    kept = [r for r in records if abs(float(r.meta["severity"]) - UNSEEN_SIZE) >= 1e-6]
    sp = split_by_load(kept, [HELD_LOAD], window, hop, class_names=BEARING_CLASSES)
    ood = window_records(unseen, window, eval_hop, class_names=BEARING_CLASSES, allow_unknown=True)
    return {"splits": sp, "unseen_fault": (ood.x, ood.y), "records": records}


def train_cwru_bundle(work: Path, cwru_dir: Path, log=print) -> Path:
    """Train the cwru-mc-dropout recipe on loads 0-2 hp (fault size 0.021 in held out), export, bundle."""
    import torch

    from edgeuq.bundle import build_bundle
    from edgeuq.catalog import get_recipe
    from edgeuq.export import export_onnx
    from edgeuq.models import ModelConfig
    from edgeuq.pipeline import train_stage
    from edgeuq.training import TrainConfig, load_checkpoint

    work = Path(work)
    bundle_dir = work / "bundle"
    if (bundle_dir / "manifest.json").is_file():
        return bundle_dir
    torch.set_num_threads(1)
    rec = get_recipe("cwru-mc-dropout")
    sets = cwru_sets(cwru_dir)
    sp = sets["splits"]
    log(f"train {len(sp.train)} / val {len(sp.val)} / held-out load {len(sp.test)} windows")
    ck_dir = work / "checkpoint"
    if (ck_dir / "checkpoint.json").is_file():
        ck = load_checkpoint(ck_dir)
    else:
        cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(sp.class_names))
        ck = train_stage(sp, cfg, TrainConfig.from_dict(rec.train), ck_dir, uq=rec.uq, progress=False, log=log)
    art = export_onnx(ck, work / "onnx", verify=True)
    build_bundle(art, bundle_dir, "cwru-mc-dropout-stream", "0.1.0", default_samples=32, overwrite=True)
    (work / "prep.json").write_text(json.dumps({"metrics": ck.metrics}, indent=2, default=str))
    return bundle_dir


if __name__ == "__main__":
    import sys
    print(train_cwru_bundle(Path(sys.argv[1]), Path(sys.argv[2])))


def train_demo_bundle(work: Path, epochs: int = 4, duration_s: float = 4.0, log=print):
    """The bearing-demo recipe (synthetic, simulated data) with fewer epochs and shorter records,
    for the adaptive-vs-fixed comparison on the demo. Returns (bundle_dir, DemoData)."""
    import torch

    from edgeuq.catalog import get_recipe
    from edgeuq.models import ModelConfig
    from edgeuq.pipeline import bundle_stage, export_stage, prepare_data, train_stage
    from edgeuq.training import TrainConfig, load_checkpoint

    work = Path(work)
    torch.set_num_threads(1)
    rec = get_recipe("bearing-demo")
    data = prepare_data(rec, synthetic_overrides={"duration_s": duration_s})
    bundle_dir = work / "bundle"
    if not (bundle_dir / "manifest.json").is_file():
        sp = data.splits
        ck_dir = work / "checkpoint"
        if (ck_dir / "checkpoint.json").is_file():
            ck = load_checkpoint(ck_dir)
        else:
            cfg = ModelConfig.from_dict(rec.model, input_length=sp.window, num_classes=len(sp.class_names))
            ck = train_stage(sp, cfg, TrainConfig.from_dict(rec.train, epochs=epochs), ck_dir, progress=False, log=log)
        bundle_stage(export_stage(ck, work / "onnx"), bundle_dir, rec, samples=32)
    return bundle_dir, data
