"""Regenerate the numeric scheme goldens (``scheme_build_golden.json``, ``scheme_train_golden.json``).

    python tests/data/make_scheme_golden.py            # rewrite both files from the current code

The first goldens were written by the code before the scheme restructuring and stored
sha256 hashes of float results; hashes are not a property of the code (PyTorch picks other
float kernels on another CPU ISA), so the goldens now store numbers: per tensor its
shape, float64 sum, sum of squares and a few leading values; the logits in full; the
metrics. They were regenerated from commit 040579f on an AVX-512 host after that commit's
outputs had matched every old hash on the same host (``test_scheme_golden.py`` at
040579f: 18 passed), so the numbers are the pre-restructuring code's numbers.
``tests/test_scheme_golden.py`` compares them with tolerances justified by float error.
Run it with the same configs and the same seeds as the tests (the measurement code is
shared: ``tests/test_scheme_golden.py`` imports nothing from here, this imports from it).
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

import test_scheme_golden as g  # noqa: E402


def main() -> int:
    torch.set_num_threads(1)
    build, train = {}, {}
    for case, old in sorted(g.BUILD.items()):
        cfg = g.ModelConfig.from_dict(old["config"])
        torch.manual_seed(0)
        build[case] = {"config": old["config"], **g.measure(g.build_model(cfg))}
    splits = g.make_splits()
    with tempfile.TemporaryDirectory() as tmp:
        for case, old in sorted(g.TRAIN.items()):
            model, metrics = g.train_case(case, old["config"], splits, Path(tmp))
            train[case] = {"config": old["config"], "params": g.tensor_stats(model), "metrics": metrics}
            if "temperature" in old:
                train[case]["temperature"] = model.cfg.temperature
    note = {"generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": "python tests/data/make_scheme_golden.py",
            "isa": g.isa_note()}
    (HERE / "scheme_build_golden.json").write_text(json.dumps({"_provenance": note, **build}, indent=1) + "\n")
    (HERE / "scheme_train_golden.json").write_text(json.dumps({"_provenance": note, **train}, indent=1) + "\n")
    print(f"wrote {len(build)} build and {len(train)} train cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
