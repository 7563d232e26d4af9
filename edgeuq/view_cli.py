"""``edgeuq view LOG.jsonl -o out.html``: a saved stream log as one self-contained HTML file
(the device's live-view page with the records embedded). Registered in ``edgeuq.cli``."""
from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register"]


def _cmd_view(a: argparse.Namespace) -> int:
    from .view import write_log_view

    out = Path(a.out) if a.out else Path(a.log).with_suffix(".html")
    write_log_view(Path(a.log), out, bundle=Path(a.bundle) if a.bundle else None, max_decisions=a.max_decisions)
    print(f"wrote {out} (one self-contained file: open it in a browser)")
    return 0


def register(sub) -> None:
    v = sub.add_parser("view", help="render a saved stream log (JSON lines) as one self-contained HTML page")
    v.add_argument("log", help="JSON-lines log of `python -m edgeuq_runtime stream` / `edgeuq diagnose --out`")
    v.add_argument("-o", "--out", help="HTML file to write (default: the log's name with .html)")
    v.add_argument("--bundle", help="the bundle that wrote the log: name, version, digest and thresholds")
    v.add_argument("--max-decisions", type=int, default=20000,
                   help="thin non-abstaining decisions beyond this many (default 20000; abstentions always kept)")
    v.set_defaults(func=_cmd_view)
