"""Table JSON (scripts/render_tables.py format) from the per-model rows of bench/order_front_end.py
and bench/feature_students.py."""
from __future__ import annotations


SHIFT_KEYS = ("new load 3 hp", "unseen size 0.021", "other geometry (simulated)")


def _f(v, digits=3):
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows, scores, extra_cols=()):
    headers = ["model", *[c for c, _ in extra_cols], "val acc", "3 hp acc"]
    for s in scores:
        headers += [f"3 hp false abstention ({s})"] + [f"AUROC {s}: {k}" for k in SHIFT_KEYS]
    out = []
    for r in rows:
        line = [r["model"], *[str(r.get(k, "-")) for _, k in extra_cols], _f(r["val_acc"], 4), _f(r["acc_3hp"], 4)]
        for s in scores:
            line += [_f(r[f"abstain_3hp_{s}"])] + [_f(r[f"auroc_{s}[{k}]"]) for k in SHIFT_KEYS]
        out.append(line)
    return headers, out
