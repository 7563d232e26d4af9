"""The import-linter contracts in pyproject.toml hold: edgeuq's layers only import downward,
the device runtime's layers too, and edgeuq_runtime imports neither edgeuq nor torch.

``lint-imports`` is a real tool (the ``test`` extra); without it this module is skipped with a
loud reason on a developer machine and FAILS under ``CI=true``. The contracts list no
``ignore_imports`` exception, and every edgeuq module is in a layer (so none escapes the check).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from require_extras import require_extra
from test_import_graph import ROOT, all_modules, imports_of

require_extra("importlinter", "test")

CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
# package facades that import nothing statically (PEP 562 lazy names): in no layer
FACADES = {"edgeuq", "edgeuq.models", "edgeuq.training"}


def _lint(root: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "runtime")])}
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache", "--config", str(ROOT / "pyproject.toml")],
                          capture_output=True, text=True, timeout=timeout, cwd=root, env=env)


def _layer_modules(contract) -> list:
    return [m.strip() for layer in contract["layers"] for m in layer.replace("|", ":").split(":")]


def test_the_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    n = len(CONFIG["contracts"])
    assert f"Contracts: {n} kept, 0 broken." in out.stdout, out.stdout[-3000:]


def test_no_contract_lists_an_exception():
    assert {c["id"] for c in CONFIG["contracts"]} >= {"edgeuq-layers", "runtime-layers", "runtime-standalone"}
    for c in CONFIG["contracts"]:
        assert "ignore_imports" not in c and "allow_indirect_imports" not in c, c["id"]


def test_every_edgeuq_module_is_in_a_layer():
    layers = _layer_modules(next(c for c in CONFIG["contracts"] if c["id"] == "edgeuq-layers"))
    modules = all_modules()
    uncovered = {m for m in modules if not any(m == l or m.startswith(l + ".") for l in layers)}
    assert uncovered == FACADES, sorted(uncovered - FACADES)
    for facade in FACADES:                      # the facades are lazy: no static edge hides behind them
        assert imports_of(facade, modules[facade], modules) <= {"edgeuq._lazy"}, facade


def test_a_planted_upward_import_breaks_the_contract(tmp_path):
    """The check can fail: a copy of the tree where the model code imports the schemes (the
    circle issue 20 found) breaks the layers contract, naming the import."""
    shutil.copytree(ROOT / "edgeuq", tmp_path / "edgeuq", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "runtime" / "edgeuq_runtime", tmp_path / "runtime" / "edgeuq_runtime",
                    ignore=shutil.ignore_patterns("__pycache__"))
    victim = tmp_path / "edgeuq" / "models" / "transformer.py"
    victim.write_text(victim.read_text() + "\n\ndef _planted():\n    from ..schemes import registry  # noqa\n")
    out = _lint(tmp_path)
    assert out.returncode != 0
    assert "BROKEN" in out.stdout and "edgeuq.models.transformer -> edgeuq.schemes" in out.stdout, out.stdout[-3000:]
