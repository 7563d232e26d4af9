"""Every module of edgeuq_runtime that registers a manifest section is imported by the package
itself (statically, so the import-linter contracts see it): found by scanning the package source,
not from a list kept next to the code it checks."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "edgeuq_runtime"


def _registering_modules():
    found = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        if rel.parts in (("manifest",),):  # defines register_manifest_section
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
                if name == "register_manifest_section" and node.args and isinstance(node.args[0], ast.Constant):
                    found[".".join(("edgeuq_runtime",) + rel.parts)] = node.args[0].value
                elif name == "register_manifest_section" and node.args and isinstance(node.args[0], ast.Name):
                    found[".".join(("edgeuq_runtime",) + rel.parts)] = None  # a module constant such as SECTION
    return found


def test_scan_finds_the_known_section_modules():
    # guards the scanner itself: it must see the four built-in section modules
    found = _registering_modules()
    assert {"edgeuq_runtime.calibration", "edgeuq_runtime.placement", "edgeuq_runtime.front_end",
            "edgeuq_runtime.ota.canaries"} <= set(found), found


def test_import_edgeuq_runtime_registers_every_section_module():
    found = _registering_modules()
    code = ("import sys, json, edgeuq_runtime; from edgeuq_runtime.manifest import MANIFEST_SECTIONS;"
            "print(json.dumps([sorted(m for m in sys.modules if m.startswith('edgeuq_runtime')),"
            " sorted(MANIFEST_SECTIONS)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(PKG.parent), "PATH": "/usr/bin:/bin"})
    import json
    loaded, sections = json.loads(out.stdout)
    missing = sorted(set(found) - set(loaded))
    assert not missing, f"edgeuq_runtime/__init__.py does not import the section modules {missing}"
    named = {v for v in found.values() if v}
    assert named <= set(sections), (named, sections)
    assert len(sections) >= len(found)
