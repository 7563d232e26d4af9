"""bench/quant_frontier.py end to end on a tiny synthetic recipe (smoke test of the benchmark)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from tiny_recipes import tiny_recipe

RECIPE = tiny_recipe("tiny-frontier", "tiny recipe for the quantization frontier smoke test", window=512, seed=2,
                     patch=32, dropout=None, weight_decay=None)


@pytest.mark.slow
def test_quant_frontier_bench_runs(tmp_path, capsys, monkeypatch):
    recipe = tmp_path / "tiny-frontier.toml"
    recipe.write_text(RECIPE)
    path = Path(__file__).resolve().parents[1] / "bench" / "quant_frontier.py"
    spec = importlib.util.spec_from_file_location("quant_frontier", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quant_frontier", bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "run"
    rc = bench.main(["--out", str(out), "--data", "synthetic", "--recipe", str(recipe), "--epochs", "1",
                     "--samples", "4", "--fisher-windows", "16", "--calib-windows", "16", "--test-windows", "24",
                     "--ood-windows", "12", "--hessian-probes", "1", "--random-seeds", "1", "--latency-repeats", "3"])
    assert rc == 0
    text = capsys.readouterr().out
    for needle in ("fisher-true", "fisher-emp", "hawq", "range", "random", "uniform int8", "uniform int4",
                   "AUROC(MI)", "latency ms", "Largest size reduction"):
        assert needle in text, needle
    res = json.loads((out / "results.json").read_text())
    assert res["fp32_bytes"] > 0 and len(res["budgets"]) >= 2
    for row in res["rows"]:
        if row["budget_bytes"] is not None:
            assert row["bytes"] <= row["budget_bytes"]
    assert (out / "quant_frontier.png").stat().st_size > 1000
