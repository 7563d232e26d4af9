"""bench/mc_overhead.py end to end with few rounds: one effect per ratio, paired, provenance written by the script."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from require_extras import require_extra

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("mc_overhead", ROOT / "bench" / "mc_overhead.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_ratio_is_paired_names_its_effect_and_the_json_carries_provenance(tmp_path, capsys):
    require_extra("onnxruntime")
    bench = _bench()
    out = tmp_path / "mc.json"
    assert bench.main(["--samples", "2", "4", "--repeats", "4", "--warmup", "0", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    p = doc["provenance"]
    assert doc["command"] == f"python bench/mc_overhead.py --samples 2 4 --repeats 4 --warmup 0 --json {out}"
    assert p["mode"] == "full" and p["threads"] == 1 and p["repeats"] == 4
    for key in ("commit", "cpu", "isa", "load_before", "load_after", "date_utc"):
        assert p[key], key
    from edgeuq.provenance import is_script_provenance

    assert is_script_provenance(p) is None
    keys = [k for k, *_ in bench.RATIOS]
    assert set(doc["ratios"]) == set(keys) and len(doc["rows"]) == len(keys)
    for key, label, effect, num, den in bench.RATIOS:
        for s in ("2", "4"):
            r = doc["ratios"][key][s]
            assert (r["numerator"], r["denominator"], r["rounds"]) == (num, den, 4)
            # the stage behind each side of the ratio is the one the label names, timed in the same run
            assert r["numerator_median_ms"] == pytest.approx(doc["median_ms"][s][num], rel=1e-12)
            assert r["denominator_median_ms"] == pytest.approx(doc["median_ms"][s][den], rel=1e-12)
            assert r["ci_low"] <= r["median"] <= r["ci_high"]
    # no ratio mixes two effects: each numerator/denominator pair differs in exactly one of
    # (model, engine, algorithm, sampling) -- attributes written down here, independently of the bench
    what = {"teacher rt det": ("teacher", "runtime", "trunk once", "deterministic"),
            "teacher rt S": ("teacher", "runtime", "trunk once", "S samples"),
            "student rt det": ("student", "runtime", "trunk once", "deterministic"),
            "student rt S": ("student", "runtime", "trunk once", "S samples"),
            "teacher torch naive S": ("teacher", "pytorch", "S full forwards", "S samples"),
            "teacher torch strong S": ("teacher", "pytorch", "trunk once", "S samples")}
    assert set(doc["median_ms"]["2"]) == set(what)
    for key, label, effect, num, den in bench.RATIOS:
        assert sum(a != b for a, b in zip(what[num], what[den])) == 1, (key, num, den)
    printed = capsys.readouterr().out
    assert doc["provenance"]["mode"] == "full" and "full run" in printed and "S=4" in printed


def test_quick_flag_is_recorded():
    bench = _bench()
    assert bench.QUICK["repeats"] < bench.FULL["repeats"] and set(bench.QUICK["samples"]) <= set(bench.FULL["samples"])
