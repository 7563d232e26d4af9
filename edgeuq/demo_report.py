"""Tables, plots and the markdown report of a demo run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from edgeuq_runtime.atomic import atomic_write

from .pipeline import DemoResult
from .profile import paired_ratio
from .report import format_table, results_table, write_markdown_report
from .uq import plot_reliability_diagram, plot_uncertainty_histograms

__all__ = ["demo_tables", "demo_model_tables", "demo_stage_table", "demo_tables_json", "write_demo_report",
           "DEMO_TABLES_COMMAND"]

#: How the README's demo tables are regenerated (scripts/render_tables.py prints it under them).
DEMO_TABLES_COMMAND = "make demo && python scripts/render_tables.py --update demo=runs/demo/tables.json"

_SET_HEADERS = ("set", "n", "accuracy", "ECE", "NLL", "Brier", "mean total", "mean aleatoric",
                "mean epistemic (MI)", "OOD AUROC (MI)", "OOD AUROC (total)")


def _na(metrics, key) -> object:
    v = metrics.get(key)
    return "n/a" if v is None else float(v)


def _ood_sets(result: DemoResult) -> List[str]:
    return [n for n, ev in result.evaluations.items() if "auroc_epistemic" in ev.metrics]


def demo_tables(result: DemoResult) -> Tuple[Tuple[str, ...], List[list], Tuple[str, ...], List[list]]:
    """The teacher's per-set table (every model's with :func:`demo_model_tables`) and the latency
    table of every model (all timed in the same rounds; ratios paired within a round)."""
    rows = []
    models = result.models or {}
    evals = {name: m.evaluations for name, m in models.items()} or {"teacher": result.evaluations}
    for model, sets in evals.items():
        for name, ev in sets.items():
            m, s = ev.metrics, ev.summary()
            rows.append([model, name, ev.n, _na(m, "accuracy"), _na(m, "ece"), _na(m, "nll"), _na(m, "brier"),
                         s["mean_total"], s["mean_aleatoric"], s["mean_epistemic"],
                         _na(m, "auroc_epistemic"), _na(m, "auroc_total")])
    lat_headers = ("runtime latency, 1 window, 1 thread", "median ms", "p90 ms",
                   "x own deterministic (paired median)", "95 % CI")
    lat_rows = []
    lats = {name: m.latency for name, m in models.items()} or {"teacher": result.latency}
    for model, lat in lats.items():
        det, mc = lat["deterministic"], lat["mc"]
        r = paired_ratio(mc, det)   # both timed in the same rounds (edgeuq.pipeline.models_latency_stage)
        lat_rows += [[det.name, det.median_ms, det.p90_ms, 1.0, "-"],
                     [mc.name, mc.median_ms, mc.p90_ms, r.median, f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"]]
    return ("model", *_SET_HEADERS), rows, lat_headers, lat_rows


_MODEL_HEADERS = ("model", "deployed", "bundle", "precision", "S", "test accuracy", "test ECE",
                  "noise-shift accuracy", "S-sample / one pass (paired median [95 % CI])", "S-sample ms",
                  "graph bytes", "bundle bytes")
_OOD_SCORES = (("MI", "auroc_epistemic"), ("total entropy", "auroc_total"), ("density", "auroc_density"),
               ("combined", "auroc_combined"))


def demo_model_tables(result: DemoResult) -> Tuple[Tuple[str, ...], List[list], Tuple[str, ...], List[list]]:
    """Teacher and student side by side: one row per model (accuracy, ECE, paired S / one-pass
    ratio, bytes), and the OOD AUROC of every score per model and shifted set."""
    ref = next(iter(result.evaluations))
    deployed = result.deployed.root
    rows, ood = [], []
    for name, m in result.models.items():
        ev = m.evaluations
        shift = [ev[n].metrics for n in ev if n != ref and "accuracy" in ev[n].metrics]
        r = paired_ratio(m.latency["mc"], m.latency["deterministic"])
        rows.append([name, "yes" if m.bundle.root == deployed else "no", m.bundle.manifest.model_name, m.precision,
                     m.samples, _na(ev[ref].metrics, "accuracy"), _na(ev[ref].metrics, "ece"),
                     _na(shift[0], "accuracy") if shift else "n/a",
                     f"{r.median:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]", m.latency["mc"].median_ms,
                     m.graph_bytes, m.bundle_bytes])
        for set_name, e in ev.items():
            if set_name == ref:
                continue
            ood.append([name, set_name, *[_na(e.metrics, key) for _, key in _OOD_SCORES]])
    return (_MODEL_HEADERS, rows, ("model", "shifted set (vs in-distribution test)",
                                   *[f"OOD AUROC ({label})" for label, _ in _OOD_SCORES]), ood)


def demo_stage_table(result: DemoResult) -> Tuple[Tuple[str, ...], List[list]]:
    """Wall and CPU seconds (user + system, every thread of the process) of each stage."""
    rows = [[k, float(v), float(result.cpu_s.get(k, float("nan")))] for k, v in result.timings_s.items()]
    rows.append(["total", float(sum(result.timings_s.values())), float(sum(result.cpu_s.values()))])
    return ("stage", "wall s", "CPU s (user+sys)"), rows


def demo_tables_json(result: DemoResult, prov: Optional[Mapping[str, Any]] = None) -> dict:
    """The demo's tables in the format ``scripts/render_tables.py`` reads; ``prov`` is the
    record :func:`edgeuq.provenance.start` took when the demo began (else one taken now)."""
    from .provenance import finish, start

    h, rows, lh, lrows = demo_tables(result)
    tables = {"sets": results_table(h, rows), "latency": results_table(lh, lrows)}
    if result.models:
        mh, mrows, oh, orows = demo_model_tables(result)
        rob = "; ".join(f"{k}: {v}" for k, v in result.robustness.items())
        tables["models"] = results_table(mh, mrows, **({"note": f"Robustness methods (declared): {rob}."}
                                                       if rob else {}))
        tables["ood"] = results_table(oh, orows)
    sh, srows = demo_stage_table(result)
    import torch

    tables["stages"] = results_table(
        sh, srows, note=f"torch intra-op threads: {torch.get_num_threads()} (ONNX Runtime: 1). With one thread the "
                        "CPU seconds bound the wall time of a quiet machine; wall time on a shared machine grows "
                        "with its load (in the provenance).")
    s = ", ".join(f"{k} S = {m.samples}" for k, m in result.models.items()) or f"S = {result.samples}"
    return {
        "command": DEMO_TABLES_COMMAND,
        "provenance": finish(prov if prov is not None else start("full", 1),
                             note=f"edgeuq demo, {s}; deployed: {result.deployed.root.name} of "
                                  f"{result.deployed.manifest.model_name}"),
        "tables": tables,
    }


def write_demo_report(result: DemoResult, prov: Optional[Mapping[str, Any]] = None) -> Path:
    out = result.out_dir
    import json

    tables = out / "tables.json"
    atomic_write(tables, json.dumps(demo_tables_json(result, prov), indent=2))
    ref_name = next(iter(result.evaluations))
    ref = result.evaluations[ref_name]
    rel = plot_reliability_diagram(
        ref.result.probs, ref.labels, out / "reliability.png",
        title=f"Reliability: {ref_name}, S={result.samples}",
    )
    hist = plot_uncertainty_histograms(
        {k: v.result.epistemic for k, v in result.evaluations.items()}, out / "epistemic_hist.png",
        xlabel="epistemic uncertainty: mutual information (nats)",
        title="Epistemic uncertainty by data set (device runtime)", log_y=True,
    )
    h, rows, lh, lrows = demo_tables(result)
    ck = result.checkpoint
    sections = {
        "Data": result.data_description + ". The data is simulated (physics-based synthetic generator), "
        "not measured vibration.",
        "Model": (
            f"`{ck.config.to_dict()}`\n\nStochastic scheme: MC dropout in blocks {list(ck.config.stochastic_blocks)}"
            + (f" (on {ck.config.stochastic_tokens} pooled tokens)" if ck.config.stochastic_tokens else "")
            + f"{' and the head' if ck.config.stochastic_head else ''}; the deterministic trunk runs once, the "
            f"stochastic head {result.samples} times in one batch. Best epoch {ck.metrics.get('best_epoch')}."
        ),
    }
    if result.robustness:
        sections["Robustness methods (declared) and the evaluation's shift"] = "\n".join(
            f"- {k}: {v}" for k, v in result.robustness.items())
    if result.models:
        mh, mrows, oh, orows = demo_model_tables(result)
        sections["Teacher and student side by side (device runtime; both bundles calibrated)"] = (
            format_table(mh, mrows, markdown=True) + "\n\n" + format_table(oh, orows, markdown=True))
    sh, srows = demo_stage_table(result)
    sections.update({
        "Uncertainty on held-out and shifted windows (device runtime, ONNX Runtime)": format_table(h, rows, markdown=True),
        "Latency (measured on this machine, medians)": format_table(lh, lrows, markdown=True),
        "Stage timings (wall and CPU seconds)": format_table(sh, srows, markdown=True),
        "Artifacts": "\n".join(
            [f"- teacher checkpoint: `{ck.directory}`", f"- teacher ONNX: `{result.onnx.directory}`",
             f"- teacher bundle: `{result.bundle.root}`"]
            + [f"- {k} bundle: `{m.bundle.root}`" for k, m in result.models.items() if k != "teacher"]
            + [f"- **deployed bundle**: `{result.deployed.root}`"]),
    })
    return write_markdown_report(
        out / "report.md", "edgeuq demo report", sections,
        images={"Reliability diagram": rel, "Epistemic uncertainty, in vs out of distribution": hist},
    )
