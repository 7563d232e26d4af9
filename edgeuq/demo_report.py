"""Tables, plots and the markdown report of a demo run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Mapping, Optional, Tuple

from edgeuq_runtime.atomic import atomic_write

from .pipeline import DemoResult
from .profile import paired_ratio
from .report import format_table, results_table, write_markdown_report
from .uq import plot_reliability_diagram, plot_uncertainty_histograms

__all__ = ["demo_tables", "demo_tables_json", "write_demo_report", "DEMO_TABLES_COMMAND"]

#: How the README's demo tables are regenerated (scripts/render_tables.py prints it under them).
DEMO_TABLES_COMMAND = "make demo && python scripts/render_tables.py --update demo=runs/demo/tables.json"

_SET_HEADERS = ("set", "n", "accuracy", "ECE", "NLL", "Brier", "mean total", "mean aleatoric",
                "mean epistemic (MI)", "OOD AUROC (MI)", "OOD AUROC (total)")


def _na(metrics, key) -> object:
    v = metrics.get(key)
    return "n/a" if v is None else float(v)


def demo_tables(result: DemoResult) -> Tuple[Tuple[str, ...], List[list], Tuple[str, ...], List[list]]:
    rows = []
    for name, ev in result.evaluations.items():
        m, s = ev.metrics, ev.summary()
        rows.append([name, ev.n, _na(m, "accuracy"), _na(m, "ece"), _na(m, "nll"), _na(m, "brier"),
                     s["mean_total"], s["mean_aleatoric"], s["mean_epistemic"],
                     _na(m, "auroc_epistemic"), _na(m, "auroc_total")])
    det, mc = result.latency["deterministic"], result.latency["mc"]
    lat_headers = ("runtime latency, 1 window, 1 thread", "median ms", "p90 ms",
                   "x deterministic (paired median)", "95 % CI")
    r = paired_ratio(mc, det)   # both timed in the same rounds (edgeuq.pipeline.latency_stage)
    lat_rows = [[det.name, det.median_ms, det.p90_ms, 1.0, "-"],
                [mc.name, mc.median_ms, mc.p90_ms, r.median, f"[{r.ci_low:.2f}, {r.ci_high:.2f}]"]]
    return _SET_HEADERS, rows, lat_headers, lat_rows


def demo_tables_json(result: DemoResult, prov: Optional[Mapping[str, Any]] = None) -> dict:
    """The demo's two tables in the format ``scripts/render_tables.py`` reads; ``prov`` is the
    record :func:`edgeuq.provenance.start` took when the demo began (else one taken now)."""
    from .provenance import finish, start

    h, rows, lh, lrows = demo_tables(result)
    return {
        "command": DEMO_TABLES_COMMAND,
        "provenance": finish(prov if prov is not None else start("full", 1), note=f"edgeuq demo, S = {result.samples}"),
        "tables": {"sets": results_table(h, rows), "latency": results_table(lh, lrows)},
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
            f"{' and the head' if ck.config.stochastic_head else ''}; the deterministic trunk runs once, the "
            f"stochastic head {result.samples} times in one batch. Best epoch {ck.metrics.get('best_epoch')}."
        ),
        "Uncertainty on held-out and shifted windows (device runtime, ONNX Runtime)": format_table(h, rows, markdown=True),
        "Latency (measured on this machine, medians)": format_table(lh, lrows, markdown=True),
        "Stage timings (s)": format_table(("stage", "seconds"), [[k, v] for k, v in result.timings_s.items()], markdown=True),
        "Artifacts": f"- checkpoint: `{ck.directory}`\n- ONNX: `{result.onnx.directory}`\n- bundle: `{result.bundle.root}`",
    }
    return write_markdown_report(
        out / "report.md", "edgeuq demo report", sections,
        images={"Reliability diagram": rel, "Epistemic uncertainty, in vs out of distribution": hist},
    )
