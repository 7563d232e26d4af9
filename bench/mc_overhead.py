"""MC-sampling overhead: what partial-Bayesian batching buys on one CPU thread.

For S in {1, 8, 32}, one input window, one thread, medians over repeats, all in
one run:

  deterministic pass      PyTorch, eval, stochastic layers at their mean (1 forward)
  runtime S-sample        edgeuq_runtime on ONNX Runtime: trunk once, head S times batched
  batched S copies        PyTorch, one forward of a batch of S copies with MC dropout on
  naive MC loop           PyTorch, S forwards with MC dropout on (the textbook recipe)

Ratios are against the PyTorch deterministic pass measured in the same run. The
model has the demo recipe's architecture with untrained weights (latency does not
depend on the weight values).

    python bench/mc_overhead.py [--samples 1 8 32] [--repeats 50] [--recipe bearing-demo]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from edgeuq.bundle import build_bundle
from edgeuq.catalog import get_recipe
from edgeuq.export import export_onnx
from edgeuq.models import ModelConfig, SignalTransformer
from edgeuq.profile import measure
from edgeuq.report import format_table
from edgeuq.training import save_checkpoint
from edgeuq_runtime import UncertaintyRuntime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--recipe", default="bearing-demo")
    ap.add_argument("--json", help="also write the table for scripts/render_tables.py (e.g. results/mc_overhead.json)")
    a = ap.parse_args(argv)

    torch.set_num_threads(1)
    rec = get_recipe(a.recipe)
    cfg = ModelConfig.from_dict(rec.model, input_length=int(rec.data["window"]), num_classes=len(rec.data["classes"]))
    torch.manual_seed(0)
    model = SignalTransformer(cfg).eval()
    x_np = np.random.default_rng(0).standard_normal((1, cfg.input_length)).astype(np.float32)
    x = torch.from_numpy(x_np)

    with tempfile.TemporaryDirectory() as tmp:
        ck = save_checkpoint(model, Path(tmp) / "ck", tuple(rec.data["classes"]), float(rec.data["fs_hz"]))
        art = export_onnx(ck, Path(tmp) / "onnx", model=model)
        bundle = build_bundle(art, Path(tmp) / "bundle", "bench", "0", default_samples=max(a.samples))
        rt = UncertaintyRuntime(bundle.root, threads=1, seed=0)

        @torch.no_grad()
        def det():
            model.set_sampling(False)
            return model(x)

        @torch.no_grad()
        def batched(s):
            model.set_sampling(True)
            return torch.softmax(model(x.expand(s, -1)), -1)

        @torch.no_grad()
        def naive(s):
            model.set_sampling(True)
            return torch.stack([torch.softmax(model(x), -1) for _ in range(s)])

        base = measure(det, repeats=a.repeats, name="deterministic pass")
        rt_det = measure(lambda: rt.deterministic(x_np), repeats=a.repeats, name="runtime deterministic")
        rows = [["PyTorch deterministic pass (1 forward)"] + [f"{base.median_ms:.3f} (1.0x)"] * len(a.samples),
                ["runtime deterministic pass (ORT, mean masks)"]
                + [f"{rt_det.median_ms:.3f} ({rt_det.ratio_to(base):.2f}x)"] * len(a.samples)]
        methods = [
            ("runtime S-sample (ORT, trunk once, head batched)", lambda s: (lambda: rt.predict(x_np, samples=s))),
            ("PyTorch one batched forward of S copies", lambda s: (lambda: batched(s))),
            ("PyTorch naive MC-dropout loop (S forwards)", lambda s: (lambda: naive(s))),
        ]
        for label, make in methods:
            row = [label]
            for s in a.samples:
                st = measure(make(s), repeats=max(5, a.repeats // (1 + s // 8)), name=f"{label} S={s}")
                row.append(f"{st.median_ms:.3f} ({st.ratio_to(base):.2f}x)")
            rows.append(row)
        model.set_sampling(False)

    print(f"MC overhead, 1 window of {cfg.input_length} samples, 1 thread; model d={cfg.d_model}, depth {cfg.depth}, "
          f"stochastic blocks {list(cfg.stochastic_blocks)} + head={cfg.stochastic_head} "
          f"(trunk = blocks before {cfg.split_index}); untrained weights")
    print("median ms (ratio to the PyTorch deterministic pass, same run)\n")
    headers = ["method"] + [f"S={s}" for s in a.samples]
    print(format_table(headers, rows))
    if a.json:
        import datetime
        import json
        import platform

        when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        doc = {"command": "python bench/mc_overhead.py --json results/mc_overhead.json",
               "provenance": f"measured {when}, {platform.machine()}, 1 thread, medians of one run",
               "headers": headers, "rows": rows}
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"json: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
