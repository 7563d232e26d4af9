"""scripts/render_tables.py: marked regions rewritten from JSON, stale ones caught, bad JSON refused;
and every results table in README.md / docs is such a region."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("render_tables", ROOT / "scripts" / "render_tables.py")
rt = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rt)


def _setup(tmp_path, doc):
    res = tmp_path / "results"
    res.mkdir()
    (res / "t.json").write_text(json.dumps(doc))
    md = tmp_path / "x.md"
    md.write_text("intro\n\n<!-- table:t -->\nold stuff\n<!-- /table:t -->\n\ntail\n")
    return res, md


def test_region_is_rewritten_with_table_and_command(tmp_path):
    res, md = _setup(tmp_path, {"command": "python bench/x.py --json results/t.json", "provenance": "measured",
                                "headers": ["a", "b"], "rows": [["x", 0.123456], ["y", None]]})
    assert rt.main([str(md), "--results", str(res), "--check"]) == 1      # stale before
    assert "old stuff" in md.read_text()                                  # --check changes nothing
    assert rt.main([str(md), "--results", str(res)]) == 0
    text = md.read_text()
    assert "| a | b |\n|---|---|\n| x | 0.1235 |\n| y | – |" in text
    assert "regenerate: `python bench/x.py --json results/t.json`" in text and "(measured)" in text
    assert text.startswith("intro\n") and text.endswith("\ntail\n") and "old stuff" not in text
    assert rt.main([str(md), "--results", str(res), "--check"]) == 0      # idempotent
    before = text
    assert rt.main([str(md), "--results", str(res)]) == 0 and md.read_text() == before


def test_sub_tables_and_update(tmp_path):
    res, md = _setup(tmp_path, {"command": "c", "provenance": "p", "tables": {"s": {"headers": ["h"], "rows": [[1]]}}})
    md.write_text("<!-- table:t#s -->\n<!-- /table:t#s -->\n")
    assert rt.main([str(md), "--results", str(res)]) == 0
    assert "| h |\n|---|\n| 1 |" in md.read_text()
    fresh = tmp_path / "fresh.json"
    fresh.write_text(json.dumps({"command": "c", "provenance": "p2", "tables": {"s": {"headers": ["h"],
                                                                                     "rows": [[2]]}}}))
    assert rt.main([str(md), "--results", str(res), "--update", f"t={fresh}"]) == 0
    assert "| 2 |" in md.read_text() and "(p2)" in md.read_text()


@pytest.mark.parametrize("doc, msg", [
    ({"provenance": "p", "headers": ["a"], "rows": []}, "must say its 'command'"),
    ({"command": "c", "headers": ["a"], "rows": []}, "must say its 'provenance'"),
    ({"command": "c", "provenance": "p", "headers": ["a", "b"], "rows": [[1]]}, "has 1 cells for 2 headers"),
    ({"command": "c", "provenance": "p", "rows": []}, "lacks 'headers'"),
])
def test_bad_table_json_is_refused(tmp_path, capsys, doc, msg):
    res, md = _setup(tmp_path, doc)
    assert rt.main([str(md), "--results", str(res)]) == 2
    assert msg in capsys.readouterr().err
    assert "old stuff" in md.read_text()  # nothing half-written


def test_readme_regions_are_up_to_date():
    assert rt.main([str(ROOT / "README.md"), "--check"]) == 0


def _hand_pasted_tables(path: Path):
    inside, bad = False, []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if re.match(r"<!-- table:", line):
            inside = True
        elif re.match(r"<!-- /table:", line):
            inside = False
        elif line.startswith("|") and not inside:
            bad.append(n)
    return bad


def test_every_results_table_in_readme_is_generated():
    assert _hand_pasted_tables(ROOT / "README.md") == []


def test_every_table_in_docs_is_generated():
    bad = {p.name: _hand_pasted_tables(p)[:1] for p in sorted((ROOT / "docs").glob("*.md"))}
    assert {k: v for k, v in bad.items() if v} == {}
