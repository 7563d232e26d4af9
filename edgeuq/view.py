"""One file to open after a run: a saved stream log rendered with the device's live-view
page (``edgeuq view LOG.jsonl``), and the evaluation report with its tables and plots
embedded (``edgeuq evaluate --html``). No network, no external file: everything inline."""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["read_log", "log_info", "log_view_html", "write_log_view", "evaluation_html", "write_evaluation_html"]


def read_log(path: Path) -> List[Dict[str, Any]]:
    """The records of a JSON-lines stream log (``stream``/``serve``/``edgeuq diagnose``);
    blank lines are skipped, anything else that is not a JSON object is an error naming the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read log {str(path)!r}: {exc}") from None
    out = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
            raise ValueError(f"{path}:{i}: expected a JSON object with a 'type' (decision, alarm, status, summary)")
        out.append(rec)
    if not any(r["type"] == "decision" for r in out):
        raise ValueError(f"{path}: no decision records (is this a stream log?)")
    return out


def _thin(records: List[Dict[str, Any]], max_decisions: int) -> Tuple[List[Dict[str, Any]], int]:
    """Keep every non-decision record, every abstaining decision and an even subset of the
    others so that at most about ``max_decisions`` decisions remain. Returns (records, dropped)."""
    from edgeuq_runtime.serve.hub import compact

    dec = [i for i, r in enumerate(records) if r["type"] == "decision"]
    keep_every = max(1, math.ceil(len(dec) / max_decisions)) if max_decisions > 0 else 1
    keep = set(dec[::keep_every]) | {dec[-1]}
    out, dropped = [], 0
    for i, r in enumerate(records):
        if r["type"] != "decision":
            out.append(r)
        elif i in keep or r.get("abstain"):
            full = dict(compact(r), probs=r["probs"], set=r.get("set")) if "probs" in r else dict(compact(r),
                                                                                                 set=r.get("set"))
            out.append(full)
        else:
            dropped += 1
    return out, dropped


def log_info(records: Sequence[Mapping[str, Any]], bundle: Optional[Path] = None) -> Dict[str, Any]:
    """What the page's Model card shows: from ``bundle`` when given (name, version, digest,
    classes, calibrated thresholds), else what the log itself says."""
    dec = [r for r in records if r["type"] == "decision"]
    info: Dict[str, Any] = {"source": "saved log", "simulated": any(r.get("simulated") for r in dec),
                            "digest": next((r["bundle_digest"] for r in records if r.get("bundle_digest")), None)}
    summary = next((r for r in reversed(records) if r["type"] == "summary"), None)
    if summary is not None:
        info["source"] = f"saved log of: {summary.get('source', '?')}"
        if summary.get("hop") and summary.get("rate_hz"):
            info["hop_seconds"] = summary["hop"] / summary["rate_hz"]
    by_index = {r["class_index"]: r["class"] for r in dec if r.get("class_index") is not None and r.get("class")}
    if by_index:
        info["classes"] = [by_index.get(i, f"class {i}") for i in range(max(by_index) + 1)]
    if bundle is not None:
        from edgeuq_runtime.bundle import load_bundle
        from edgeuq_runtime.calibration import read_calibration

        b = load_bundle(bundle, verify=True)
        m = b.manifest
        info.update(model=m.model_name, version=m.model_version, digest=b.digest, classes=list(m.class_names))
        cal = read_calibration(b)
        if cal is not None:
            ab = cal.abstain
            info["thresholds"] = {"epistemic": ab.epistemic, "density": ab.density, "combined": ab.combined,
                                  "false_alarm_rate": ab.false_alarm_rate}
        if info["digest"] and any(r.get("bundle_digest") not in (None, b.digest) for r in dec):
            info["source"] += " (WARNING: the log was written by a different bundle than --bundle)"
    info.setdefault("model", "(bundle not given: pass --bundle for name, version and thresholds)")
    return info


def log_view_html(records: List[Dict[str, Any]], info: Mapping[str, Any], title: str = "",
                  max_decisions: int = 20000) -> str:
    from edgeuq_runtime.serve.page import render_page

    kept, dropped = _thin(records, max_decisions)
    if dropped:
        title = f"{title} ({dropped} of the non-abstaining decisions thinned out for size)"
    return render_page({"mode": "log", "info": dict(info), "records": kept, "title": title})


def write_log_view(log: Path, out: Path, bundle: Optional[Path] = None, max_decisions: int = 20000) -> Path:
    records = read_log(log)
    page = log_view_html(records, log_info(records, bundle), title=Path(log).name, max_decisions=max_decisions)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    return out


# ---------------- the evaluation report ----------------

_EVAL_CSS = """body{font:15px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1000px;padding:12px;color:#111827}
h1{font-size:20px}h2{font-size:16px;margin-top:24px}table{border-collapse:collapse;font-size:13px;display:block;
overflow-x:auto}th,td{border:1px solid #d1d5db;padding:3px 7px;text-align:right}th:first-child,td:first-child{
text-align:left}th{background:#f3f4f6}img{max-width:100%;height:auto;border:1px solid #e5e7eb;margin:6px 0}
.muted{color:#6b7280;font-size:13px}pre{background:#f9fafb;padding:8px;overflow:auto;font-size:12px}"""


def _cell(v: Any) -> str:
    from .report import _fmt

    return html.escape(_fmt(v))


def _table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def evaluation_html(ev: Any, doc: Mapping[str, Any], plots: Mapping[str, Path]) -> str:
    """The evaluation report as one HTML file: summary, tables, PNG plots inlined as base64."""
    parts = [f"<h1>Evaluation: {html.escape(ev.model)}</h1>",
             f"<p class='muted'>bundle {html.escape(str(ev.bundle))}, S = {ev.samples} samples; entropies in "
             "nats</p><ul>"]
    parts += [f"<li><b>{html.escape(role)}</b>: {html.escape(text)}</li>" for role, text in ev.descriptions.items()]
    parts.append("</ul><h2>Metrics</h2>" + _table(*ev.table()))
    if ev.ood is not None:
        parts.append("<h2>Out-of-distribution detection</h2>" + _table(*ev.ood_table()))
    if plots:
        parts.append("<h2>Plots</h2>")
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption class='muted'>{html.escape(name)}</figcaption></figure>")
    parts.append("<h2>All numbers (JSON)</h2><details><summary>show</summary><pre>"
                 + html.escape(json.dumps(doc, indent=2, sort_keys=True, default=str)) + "</pre></details>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            "content='width=device-width, initial-scale=1'><title>edgeuq evaluation: "
            f"{html.escape(ev.model)}</title><style>{_EVAL_CSS}</style></head><body>" + "".join(parts)
            + "</body></html>")


def write_evaluation_html(ev: Any, doc: Mapping[str, Any], out: Path,
                          plots: Optional[Mapping[str, Any]] = None) -> Path:
    """Write :func:`evaluation_html`; ``plots`` (name -> PNG already written), else they are
    drawn into a temporary directory that is removed afterwards."""
    import tempfile

    from .evaluate import write_evaluation_plots

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if plots is not None:
        out.write_text(evaluation_html(ev, doc, plots), encoding="utf-8")
        return out
    with tempfile.TemporaryDirectory(prefix="edgeuq-eval-plots-") as tmp:
        out.write_text(evaluation_html(ev, doc, write_evaluation_plots(ev, Path(tmp))), encoding="utf-8")
    return out
