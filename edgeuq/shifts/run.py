"""Run the whole suite for several models; tables and a plot from its result."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from edgeuq_runtime import UncertaintyRuntime

from ..data import SignalRecord
from ..report import results_table
from .channels import other_channel_segments
from .protocol import ShiftProtocol, build_protocol_data
from .sets import SetOptions, Skipped, build_sets
from .suite import SCORE_NAMES, SuiteOptions, evaluate_model

__all__ = ["run_suite", "suite_tables", "plot_suite", "GEN_HEADERS", "FLAG_HEADERS"]

Log = Callable[[str], None]

GEN_HEADERS = ["model", "shift", "windows (records)", "accuracy", "false abstention", "of which p-value rule"]
FLAG_HEADERS = ["model", "shift", "windows (records)", "AUROC MI", "total entropy", "density", "max-z (old)",
                "min-p", "Fisher", "device rule", "same, marginal p", "FPR95 device", "abstention",
                "fired (share of windows)"]


def run_suite(models: Sequence[Tuple[str, Path]], records: Sequence[SignalRecord], workdir: Path,
              protocol: ShiftProtocol = ShiftProtocol(), set_options: SetOptions = SetOptions(),
              options: SuiteOptions = SuiteOptions(), label_map: Mapping[str, str] = {},
              log: Log = print) -> Dict[str, Any]:
    """Evaluate every (name, bundle dir); the protocol's data is built once per class set / window."""
    cache: Dict[Tuple, Any] = {}
    results = []
    for name, bundle in models:
        rt = UncertaintyRuntime(Path(bundle))
        m = rt.manifest
        key = (tuple(rt.class_names), int(m.input.length), float(m.input.sample_rate_hz))
        if key not in cache:
            recs = list(records)
            if any(r.fs != key[2] for r in recs):
                from ..data.windowing import resample_record

                recs = [resample_record(r, key[2]) for r in recs]
            data = build_protocol_data(recs, key[0], key[1], protocol, label_map)
            alt, why = other_channel_segments(data.test_segments, data.fs)
            sets = build_sets(data, set_options, alt)
            if not alt:
                sets = [s if not (isinstance(s, Skipped) and s.name == "other sensor channel") else
                        Skipped(s.name, s.kind, why or s.reason) for s in sets]
            log(f"protocol for classes {list(key[0])}: {data.describe()}")
            for s in sets:
                log(f"  {s.kind:10s} {s.name}: " + (f"{len(s)} windows" if not isinstance(s, Skipped)
                                                   else f"skipped ({s.reason})"))
            cache[key] = (data, sets)
        data, sets = cache[key]
        results.append(evaluate_model(name, Path(bundle), data, sets, Path(workdir) / _slug(name), options, log))
    return {"protocol": {"held_load": protocol.held_load, "held_size": protocol.held_size,
                         "fractions": list(protocol.fractions), "eval_hop": protocol.eval_hop,
                         "max_eval_windows": protocol.max_eval_windows},
            "data": {"; ".join(k[0]): v[0].describe() for k, v in cache.items()},
            "set_options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(set_options).items()},
            "models": results}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _f(v: Optional[float], d: int = 3) -> Optional[str]:
    return None if v is None or not np.isfinite(v) else f"{v:.{d}f}"


def _pct(v: Optional[float]) -> Optional[str]:
    return None if v is None else f"{100 * v:.1f} %"


def _fired(row: Mapping[str, Any]) -> str:
    """The abstention reasons, most frequent first, with their share of the set's windows."""
    rs = sorted(row["reasons"].items(), key=lambda kv: -kv[1])
    return ", ".join(f"{k.replace('pvalue:', 'p:')} {100 * v / max(1, row['n']):.0f} %" for k, v in rs[:3]) or "none"


def suite_tables(doc: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    gen, flag, rules, skipped = [], [], [], []
    for m in doc["models"]:
        r = m["device_rule"]
        best = max(r["validation"], key=lambda t: t["auroc"])["auroc"] if r["validation"] else None
        w = r.get("weights")     # the weighted rule's {part: weight}
        shown = r["parts"] if not w else [f"{p} ({w[p]:.3g})" for p in r["parts"]]
        rules.append([m["model"], f"{r['rule']} of {' + '.join(shown)}", _f(best), m["samples"],
                      m["calibration_n"], m["density_fit"]["n"] if m["density_fit"] else None,
                      m["density_fit"]["overlap"] if m["density_fit"] else None])
        for row in m["generalise"]:
            gen.append([m["model"], row["shift"], f"{row['n']} ({row.get('records', '–')})", _pct(row["accuracy"]),
                        _pct(row["abstain"]), _pct(row["abstain_rule"])])
        for row in m["flag"]:
            name = row["shift"] + (" [control]" if row["kind"] == "control" else "")
            flag.append([m["model"], name, f"{row['n']} ({row['records']})",
                         *[_f(row[f"auroc_{k}"]) for k in SCORE_NAMES], _f(row["fpr95_device"]),
                         _pct(row["abstain"]), _fired(row)])
        for s in m["skipped"]:
            skipped.append([m["model"], s["shift"], s["kind"], s["reason"]])
    out = {"generalise": results_table(GEN_HEADERS, gen),
           "flag": results_table(FLAG_HEADERS, flag),
           "rule": results_table(["model", "device rule (picked on validation)", "validation AUROC", "S",
                                  "calibration windows", "density fit windows", "fit/cal overlap"], rules)}
    if skipped:
        out["skipped"] = results_table(["model", "shift", "kind", "why skipped"], skipped)
    return out


def plot_suite(doc: Mapping[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = doc["models"]
    shifts: List[str] = []
    for m in models:
        shifts += [r["shift"] for r in m["flag"] if r["shift"] not in shifts]
    keys = ["mi", "total", "density", "maxz", "min_p", "device"]
    ncol = min(3, max(1, len(models)))
    nrow = -(-max(1, len(models)) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, (0.45 * len(shifts) + 1.2) * nrow), squeeze=False)
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    for ax, m in zip(axes.flat, models):
        rows = {r["shift"]: r for r in m["flag"]}
        y = np.arange(len(shifts))
        h = 0.8 / len(keys)
        for j, k in enumerate(keys):
            ax.barh(y + j * h, [rows[s][f"auroc_{k}"] if s in rows else np.nan for s in shifts], h, label=k)
        ax.set_yticks(y + 0.4 - h / 2)
        ax.set_yticklabels(shifts if ax in axes[:, 0] else [], fontsize=7)
        ax.set_xlim(0.4, 1.0)
        ax.axvline(0.95, color="k", lw=0.5, ls=":")
        ax.set_title(f"{m['model']}: AUROC per should-flag shift", fontsize=8)
        ax.invert_yaxis()
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=len(keys))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
