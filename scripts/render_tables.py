#!/usr/bin/env python3
"""Rewrite the results tables of README.md and docs/*.md from benchmark JSON.

Every results table in the docs sits between two markers naming its source::

    <!-- table:mc_overhead -->            -> results/mc_overhead.json
    ...generated, do not edit...
    <!-- /table:mc_overhead -->

    <!-- table:demo#latency -->           -> results/demo.json, its "tables"."latency"
    <!-- /table:demo#latency -->

A table JSON file (what benchmarks write with ``--json``) is::

    {"command": "python bench/mc_overhead.py --json results/mc_overhead.json",
     "provenance": "measured 2026-11-29 on ...",        # or "transcribed ..." -- printed as is
     "headers": ["method", "S=1", ...], "rows": [["...", "0.778 (1.0x)", ...], ...],
     "note": "optional line printed under the table"}

or ``{"command": ..., "provenance": ..., "tables": {"NAME": {"headers": ..., "rows": ...}}}``
for several tables from one run. Under each table the script writes which command
regenerates it.

Numbers in prose get regions too: ``<!-- value:NAME#KEY -->0.853<!-- /value:NAME#KEY -->``
is replaced by ``results/NAME.json``'s ``"values"[KEY]`` (a string, or a number printed
with 4 significant digits).

The provenance a benchmark writes is a record (``edgeuq.provenance``: mode quick/full,
date, commit, CPU and ISA, threads, load); a table whose JSON carries anything else
(hand-typed text, "transcribed ...") is rendered with a warning under it, and
``--strict`` fails on it.

Usage::

    python scripts/render_tables.py                 # rewrite README.md, docs/*.md, runtime/README.md in place
    python scripts/render_tables.py --check         # exit 1 if any region is stale (CI)
    python scripts/render_tables.py --check --strict  # ... or any table's provenance was not written by a script
    python scripts/render_tables.py --sources       # which results JSON each file renders, quick or full
    python scripts/render_tables.py --update demo=runs/demo/tables.json   # copy a fresh JSON in first
    python scripts/render_tables.py FILE.md ...     # only these files

Cells are printed as given (strings) or formatted (floats: 4 significant digits;
None -> "–"), so a benchmark decides its own rounding by writing strings.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"<!-- table:(?P<name>[A-Za-z0-9_.\-]+(?:#[A-Za-z0-9_.\-]+)?) -->\n(?P<body>.*?)"
                    r"<!-- /table:(?P=name) -->", re.S)
VALUE = re.compile(r"<!-- value:(?P<name>[A-Za-z0-9_.\-]+#[A-Za-z0-9_.\-]+) -->(?P<body>.*?)"
                   r"<!-- /value:(?P=name) -->", re.S)
sys.path.insert(0, str(ROOT))
from edgeuq.provenance import describe, is_script_provenance  # noqa: E402
from edgeuq_runtime.atomic import atomic_write  # noqa: E402


class TableError(ValueError):
    pass


def cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    if not headers:
        raise TableError("a table needs headers")
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        if len(r) != len(headers):
            raise TableError(f"row {list(r)!r} has {len(r)} cells for {len(headers)} headers")
        lines.append("| " + " | ".join(cell(c) for c in r) + " |")
    return "\n".join(lines)


def _read(file: str, results: Path, what: str) -> Dict[str, Any]:
    path = results / f"{file}.json"
    if not path.is_file():
        raise TableError(f"{what}: {path} not found")
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise TableError(f"{what}: {path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TableError(f"{what}: {path} is not a JSON object")
    for key in ("command", "provenance"):
        if not doc.get(key):
            raise TableError(f"{what}: {path} must say its {key!r} (how to regenerate it, where it came from)")
    return doc


def load_table(name: str, results: Path) -> Dict[str, Any]:
    file, _, sub = name.partition("#")
    doc = _read(file, results, f"table {name!r}")
    table = doc
    if sub:
        table = (doc.get("tables") or {}).get(sub)
        if table is None:
            raise TableError(f"table {name!r}: {results / file}.json has no tables.{sub} "
                             f"(has {sorted(doc.get('tables') or {})})")
    for key in ("headers", "rows"):
        if key not in table:
            raise TableError(f"table {name!r}: {results / file}.json lacks {key!r}")
    return {**table, "command": doc["command"], "provenance": doc["provenance"]}


def _provenance_line(prov: Any) -> str:
    why = is_script_provenance(prov)
    if why is None:
        return describe(prov)
    return f"⚠ NOT REGENERATED BY A BENCHMARK: {why}: {describe(prov)}"


def render_region(name: str, results: Path) -> str:
    t = load_table(name, results)
    parts = [markdown_table(t["headers"], t["rows"]), ""]
    if t.get("note"):
        parts += [str(t["note"]), ""]
    parts += [f"<sub>Generated from `results/{name.partition('#')[0]}.json` ({_provenance_line(t['provenance'])}); "
              f"regenerate: `{t['command']}`, then `python scripts/render_tables.py`.</sub>", ""]
    return "\n".join(parts)


def render_value(name: str, results: Path) -> str:
    file, _, key = name.partition("#")
    doc = _read(file, results, f"value {name!r}")
    values = doc.get("values") or {}
    if key not in values:
        raise TableError(f"value {name!r}: {results / file}.json has no values.{key} (has {sorted(values)})")
    v = values[key]
    if isinstance(v, dict) or isinstance(v, list):
        raise TableError(f"value {name!r}: values.{key} must be a string or a number")
    return cell(v)


def render_text(text: str, results: Path) -> str:
    text = MARKER.sub(lambda m: f"<!-- table:{m['name']} -->\n{render_region(m['name'], results)}"
                                f"<!-- /table:{m['name']} -->", text)
    return VALUE.sub(lambda m: f"<!-- value:{m['name']} -->{render_value(m['name'], results)}"
                               f"<!-- /value:{m['name']} -->", text)


def sources(text: str) -> List[str]:
    """The results JSON files a markdown text renders (tables and values)."""
    names = [m["name"] for m in MARKER.finditer(text)] + [m["name"] for m in VALUE.finditer(text)]
    return list(dict.fromkeys(n.partition("#")[0] for n in names))


def unscripted(files: Sequence[Path], results: Path) -> Dict[str, str]:
    """results JSON rendered by ``files`` whose provenance was not written by a benchmark -> why."""
    bad = {}
    for path in files:
        for name in sources(path.read_text()):
            why = is_script_provenance(_read(name, results, name)["provenance"])
            if why is not None:
                bad[name] = why
    return bad


def default_files(root: Path) -> List[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md")), root / "runtime" / "README.md"]
            if p.is_file()]


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="markdown files (default: README.md, docs/*.md)")
    ap.add_argument("--results", type=Path, default=ROOT / "results", help="folder of table JSON files")
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region is out of date")
    ap.add_argument("--strict", action="store_true",
                    help="also exit 1 if a rendered JSON's provenance was not written by a benchmark script")
    ap.add_argument("--sources", action="store_true", help="list each rendered results JSON: mode, date, command")
    ap.add_argument("--update", action="append", default=[], metavar="NAME=PATH",
                    help="first copy PATH to <results>/NAME.json (e.g. demo=runs/demo/tables.json)")
    a = ap.parse_args(argv)
    for item in a.update:
        name, sep, src = item.partition("=")
        if not sep or not name or not Path(src).is_file():
            print(f"render_tables: --update {item!r}: expected NAME=PATH of an existing file", file=sys.stderr)
            return 2
        load_table_doc = json.loads(Path(src).read_text())  # refuse to copy something that is not JSON
        if not isinstance(load_table_doc, dict):
            print(f"render_tables: {src} is not a table JSON object", file=sys.stderr)
            return 2
        a.results.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, a.results / f"{name}.json")
    files = a.files or default_files(ROOT)
    if a.sources:
        for name in sorted({n for p in files for n in sources(p.read_text())}):
            doc = _read(name, a.results, name)
            prov = doc["provenance"]
            mode = prov.get("mode") if isinstance(prov, dict) else "hand-written"
            date = prov.get("date_utc") if isinstance(prov, dict) else "?"
            print(f"{name:28s} {mode:12s} {date:22s} {doc['command']}")
        return 0
    stale, count = [], 0
    for path in files:
        text = path.read_text()
        try:
            new = render_text(text, a.results)
        except TableError as exc:
            print(f"render_tables: {path}: {exc}", file=sys.stderr)
            return 2
        count += len(MARKER.findall(text)) + len(VALUE.findall(text))
        if new != text:
            stale.append(path)
            if not a.check:
                atomic_write(path, new)
    verb = "stale" if a.check else "rewritten"
    print(f"render_tables: {count} region(s); {verb}: {', '.join(str(p) for p in stale) or 'none'}")
    bad = unscripted(files, a.results)
    for name, why in sorted(bad.items()):
        print(f"render_tables: results/{name}.json: {why}", file=sys.stderr)
    if a.check and stale:
        return 1
    return 1 if a.strict and bad else 0


if __name__ == "__main__":
    sys.exit(main())
