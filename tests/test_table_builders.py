"""Every results table is built by the one primitive ``edgeuq.report.results_table``: a scanner
reads the package, the benches and the scripts and finds tables built by hand (a ``{"headers": ...,
"rows": ...}`` dict literal, ``dict(headers=..., rows=...)``, ``t["headers"] = ...`` or
``zip(("headers", "rows"), ...)``) so a new bench cannot slip back. The scanner is checked on
planted examples of each form, and on the converted forms it must accept."""
import ast
import textwrap
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("edgeuq", "bench", "scripts")
PRIMITIVE = ROOT / "edgeuq" / "report.py"  # where results_table itself builds the dict
KEYS = ("headers", "rows")


def _const(node) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def hand_built_tables(source: str) -> List[Tuple[int, str]]:
    """(line, form) of every table built without results_table in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Dict) and {"headers", "rows"} <= {_const(k) for k in node.keys if k is not None}:
            found.append((node.lineno, "dict literal with 'headers' and 'rows'"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" \
                and "headers" in {k.arg for k in node.keywords}:
            found.append((node.lineno, "dict(headers=...)"))
        elif isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store) and _const(node.slice) == "headers":
            found.append((node.lineno, "x['headers'] = ..."))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "zip" \
                and any(isinstance(a, (ast.Tuple, ast.List)) and {"headers", "rows"} <= {_const(e) for e in a.elts}
                        for a in node.args):
            found.append((node.lineno, "zip(('headers', 'rows'), ...) into a dict"))
    return found


def _files():
    for top in SCANNED:
        for p in sorted((ROOT / top).rglob("*.py")):
            if p != PRIMITIVE:
                yield p


def test_no_table_is_built_by_hand():
    bad = []
    for p in _files():
        rel = p.relative_to(ROOT).as_posix()
        bad += [f"{rel}:{line}: {form}" for line, form in hand_built_tables(p.read_text())]
    assert not bad, ("results tables built without edgeuq.report.results_table (build them with "
                     "results_table(headers, rows, **extra)):\n" + "\n".join(bad))


PLANTED = {
    "dict literal": """
        def main(rows):
            write_results("x.json", {"headers": ["a", "b"], "rows": rows, "note": "n"}, "cmd", {})
        """,
    "nested in tables": """
        doc = {"tables": {"t": {"headers": H, "rows": [[1, 2]]}}}
        """,
    "dict() call": """
        t = dict(headers=H, rows=R)
        """,
    "subscript store": """
        t = {}
        t["headers"] = H
        t["rows"] = R
        """,
    "zip of keys": """
        t = dict(zip(("headers", "rows"), table()))
        """,
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_scanner_catches_a_planted_hand_built_table(name):
    found = hand_built_tables(textwrap.dedent(PLANTED[name]))
    assert found, f"the scanner missed a planted hand-built table ({name})"


def test_scanner_accepts_results_table_and_reads():
    src = textwrap.dedent("""
        from edgeuq.report import results_table
        doc = {"tables": {"t": results_table(H, R, note="n")}, "rows": records}
        print(t["headers"], t["rows"])
        for key in ("headers", "rows"):
            check(t[key])
        headers = {"Content-Type": "text/plain"}
        req = {"headers": headers, "url": "x"}
        """)
    assert hand_built_tables(src) == []


def test_scanner_sees_every_scanned_tree():
    # a scanner that silently read nothing would pass the first test: the trees must hold files,
    # among them the last one converted (bench/backends.py, whose exemption is gone)
    files = {p.relative_to(ROOT).as_posix() for p in _files()}
    for top in SCANNED:
        assert any(f.startswith(top + "/") for f in files), f"no Python file scanned under {top}/"
    assert "bench/backends.py" in files
