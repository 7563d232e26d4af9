"""The MiniLM-L6 teacher with every layer fine-tuned on all SST-2 training phrases, on this CPU.

    nice -n 5 .venv/bin/python bench/text_teacher_full.py --out ../shared-runs/teacher-full \\
        [--epochs 1] [--lr 5e-5] [--time-cap-min 72] [--json results/text_teacher_full.json]
    ... --quick            # minutes: 2,000 phrases, 1 epoch, text_ood's quick sizes

Steps, all through the library's stages:
  1. ``edgeuq text-teacher`` (``edgeuq.text.pipeline.train_text_teacher``) with ``train_layers`` =
     6 (every layer; the embeddings frozen; ids padded per length-bucketed batch, no frozen-layer
     cache), linear warm-up + decay, validation accuracy per epoch, the best epoch kept, a time cap;
     last-layer Laplace and MC-dropout bundles whose trunk also emits the pretrained Avg-Avg
     features; device-runtime metrics (SST-2 test = GLUE dev: accuracy, ECE, NLL; AUROC vs TREC).
     A second run with the same inputs reuses the artifact (it is cached by its inputs).
  2. ``bench/text_ood.py --teacher-dir OUT``: every OOD score of that teacher against TREC and the
     constructed shifts (densities fitted on SST-2 training phrases, chosen on half A).
  3. S = 32 against one deterministic pass of the Laplace bundle on the device runtime (paired,
     interleaved rounds; one thread).
The JSON carries the recipe, the time per epoch, the validation accuracy per epoch, and provenance
(load included: the machine is shared, so times are this run's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
DEFAULT_DATA = REPO.parent / "shared" / "data" / "text"


def _ratio_s32(bundle: Path, texts, samples: int, rounds: int) -> dict:
    """Median paired ratio of S = ``samples`` over one deterministic pass (device runtime), timed by
    bench/text_teacher.py's ``_latency`` (the same rounds, the same pairing)."""
    from edgeuq_runtime import UncertaintyRuntime
    from text_teacher import _latency

    lat = _latency(UncertaintyRuntime(bundle, threads=1, seed=0), list(texts), samples, rounds)
    return {"samples": samples, "rows": len(texts), "rounds": rounds, "ratio": lat["ratio"],
            "ratio_ci": lat["ratio_ci"], "one_pass_ms_per_row": lat["det_ms"], "s_ms_per_row": lat["mc_ms"],
            "how": "device runtime, Laplace bundle, paired interleaved rounds, 1 thread"}


def _bundle_bytes(root: Path) -> int:
    return int(sum(p.stat().st_size for p in root.rglob("*.onnx")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "teacher-full", help="the TextTeacher artifact")
    ap.add_argument("--ood-out", type=Path, help="bench/text_ood.py's folder (default OUT-ood)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--val-limit", type=int, default=2000)
    ap.add_argument("--train-limit", type=int, default=0)
    ap.add_argument("--time-cap-min", type=float, default=72.0)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=7, help="latency rounds (paired)")
    ap.add_argument("--latency-rows", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-artifact", action="store_true",
                    help="read the TextTeacher artifact already in OUT (e.g. made by the same recipe through "
                         "`edgeuq text-teacher`) instead of running the stage; its own options are reported")
    ap.add_argument("--skip-ood", action="store_true", help="reuse OOD_OUT/results.json of an earlier text_ood run")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--quick", action="store_true", help="smoke size: 2,000 phrases, 1 epoch, text_ood --quick")
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, finish, start, write_results
    from edgeuq.report import results_table

    if a.quick:
        a.train_limit, a.epochs, a.val_limit, a.rounds = 2000, 1, 300, 3
    prov = start("quick" if a.quick else "full", 1)
    command = command_line("bench/text_teacher_full.py", argv)
    sst, trec = a.data / "sst2", a.data / "trec"
    if not (sst / "train.tsv").is_file() or not (trec / "test.tsv").is_file():
        print(f"SST-2/TREC not found under {a.data}; nothing to do", file=sys.stderr)
        return 2
    import torch

    from edgeuq.text.pipeline import TeacherOptions, train_text_teacher

    t0 = time.time()
    opts = TeacherOptions(train_layers=6, epochs=a.epochs, lr=a.lr, batch=a.batch, train_limit=a.train_limit,
                          val_limit=a.val_limit, seed=a.seed, samples=a.samples, schemes=("laplace", "mc_dropout"),
                          ood_features="avgavg", keep_best=True, time_cap_min=a.time_cap_min)
    if a.from_artifact:
        from edgeuq.text.pipeline import load_text_teacher

        art = load_text_teacher(a.out)
        print(f"teacher artifact read from {a.out} (made by: its options {art.options})", flush=True)
    else:
        art = train_text_teacher(sst / "train.tsv", a.out, opts, val=sst / "dev.tsv", test=sst / "test.tsv",
                                 ood=[trec / "test.tsv"], force=False)
    t_teacher = time.time() - t0
    hist = art.history
    if "stopped" in hist:
        print(f"NOTE: the fine-tune was stopped by the time cap at epoch {hist['stopped'][0]} step "
              f"{hist['stopped'][1]}; the numbers are of those weights", flush=True)

    ood_out = a.ood_out or a.out.parent / (a.out.name + "-ood")
    if not a.skip_ood:
        import text_ood

        rc = text_ood.main(["--data", str(a.data), "--teacher-dir", str(a.out), "--out", str(ood_out),
                            "--samples", str(a.samples), "--seed", str(a.seed), *(["--quick"] if a.quick else [])])
        if rc:
            print(f"bench/text_ood.py failed ({rc})", file=sys.stderr)
            return rc
    ood = json.loads((ood_out / "results.json").read_text())

    torch.set_num_threads(1)
    from edgeuq.compress.slicing import count_params
    from edgeuq.data.text import load_sst2

    test = load_sst2(sst)["test"]
    pick = np.sort(np.random.default_rng(a.seed).permutation(len(test))[:a.latency_rows])
    timed_scheme = "laplace"                                   # the scheme whose bundle is timed (data, not a switch)
    latency = _ratio_s32(art.bundle_path(timed_scheme), [test.texts[i] for i in pick], a.samples, a.rounds)
    ratio_cells = {timed_scheme: f"{latency['ratio']:.2f}"}
    model = art.load_model("laplace")
    params = count_params(model)
    bundle_bytes = {s: _bundle_bytes(art.bundle_path(s)) for s in art.bundles}

    m = art.metrics
    default = ood["selection"]["default"]
    auroc_b = ood["auroc"]["B"]
    rows = []
    for scheme in art.bundles:
        r = m[scheme]
        trec_rt = next(iter(r.get("ood", {}).values()), {})
        rows.append([scheme, f"{r['accuracy']:.4f}", f"{r['ece']:.4f}", f"{r['nll']:.3f}",
                     f"{trec_rt.get('auroc_mi', float('nan')):.3f}", f"{trec_rt.get('auroc_total', float('nan')):.3f}",
                     ratio_cells.get(scheme, "-"),
                     f"{bundle_bytes[scheme] / 1e6:.1f}"])
    epoch_s = hist.get("epoch_s", [])
    recipe = {k: art.options[k] for k in ("train_layers", "epochs", "lr", "lr_head", "batch", "max_length", "seed",
                                          "val_limit", "hidden", "head_dropout", "ood_features")}
    recipe.update({"keep_best": art.options.get("keep_best", False), "time_cap_min": art.options.get("time_cap_min", 0),
                   "embeddings": "frozen (word, position, type tables and their LayerNorm)",
                   "schedule": "AdamW, linear warm-up over 6 % of the steps, then linear decay to 0",
                   "train_rows": art.data["rows"]["train"], "val_rows": art.data["rows"]["val"]})
    shifts = [k for k in auroc_b[default] if k != "mean_constructed"]
    results = {
        "what": "MiniLM-L6 SST-2 teacher with every encoder layer fine-tuned on this CPU (edgeuq text-teacher "
                "--train-layers 6); device-runtime metrics of its bundles, OOD scores of bench/text_ood.py",
        "artifact": str(a.out), "recipe": recipe, "history": hist,
        "time_per_epoch_s": epoch_s, "train_s": art.timings.get("train_s"), "timings": dict(art.timings),
        "stopped_by_time_cap": hist.get("stopped"),
        "runtime_metrics": m, "latency_s32_vs_one_pass": latency, "params": params, "bundle_onnx_bytes": bundle_bytes,
        "ood": {"default": default, "selection_rule": ood["selection"]["rule"], "auroc_B": auroc_b,
                "auroc_A_mean_constructed": {s: v["mean_constructed"] for s, v in ood["auroc"]["A"].items()},
                "host_test_acc": ood["teacher"]["test_acc"], "host_test_ece": ood["teacher"]["test_ece"],
                "density_fit": ood["density_fit"], "set_sizes": ood["set_sizes"]},
        "bench_s": time.time() - t0, "teacher_stage_s": t_teacher,
        "tables": {
            "text_teacher_full": results_table(
                ["head", "SST-2 acc (GLUE dev, runtime)", "ECE", "NLL", "AUROC MI vs TREC", "AUROC total H vs TREC",
                 f"S = {a.samples} / one pass", "bundle ONNX MB"], rows,
                note=(f"train_layers 6 of 6 on {recipe['train_rows']} phrases, {len(hist.get('train_loss', []))} "
                      f"epoch(s) at lr {recipe['lr']:g}; minutes per epoch "
                      + ", ".join(f"{s / 60:.1f}" for s in epoch_s)
                      + "; validation accuracy per epoch " + ", ".join(f"{v:.4f}" for v in hist.get("val_acc", []))
                      + (f"; stopped by the time cap at {hist['stopped']}" if "stopped" in hist else ""))),
            "text_teacher_full_ood": results_table(
                ["score", *[f"{sh} (B)" for sh in shifts], "mean constructed (A, chooses)", "mean constructed (B)"],
                [[s + (" (default)" if s == default else ""), *[f"{auroc_b[s][sh]:.3f}" for sh in shifts],
                  f"{ood['auroc']['A'][s]['mean_constructed']:.3f}", f"{auroc_b[s]['mean_constructed']:.3f}"]
                 for s in auroc_b]),
        },
    }
    print(json.dumps({k: results[k] for k in ("recipe", "time_per_epoch_s", "latency_s32_vs_one_pass")}, indent=1))
    for name, t in results["tables"].items():
        print(f"\n{name}\n" + " | ".join(t["headers"]))
        for r in t["rows"]:
            print(" | ".join(str(c) for c in r))
    if a.json:
        write_results(a.json, results, command, finish(prov))
        print(f"results: {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
