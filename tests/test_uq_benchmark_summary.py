"""bench/uq_benchmark.py --summary-json: the README's scheme table rebuilt from results.json."""
import importlib.util
import json

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("uq_benchmark", ROOT / "bench" / "uq_benchmark.py")
ub = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ub)


def _r(task, variant, test=None, ood=None, shifts=None, latency=None):
    return {"task": task, "variant": variant, "test": test or {}, "ood": ood or {}, "shifts": shifts or {},
            "latency_ms": latency or {}, "info": {}}


RESULTS = [
    _r("cwru_in_domain", "mc_dropout", {"accuracy": 1.0, "ece": 0.0019},
       shifts={"snr 0 dB": {"accuracy": 0.642, "auroc_mi": 0.757}, "snr 10 dB": {"accuracy": 0.9}},
       latency={"deterministic": 0.2, "S=32": 1.03}),
    _r("cwru_in_domain", "mc_dropout+ts", {"accuracy": 1.0, "ece": 0.001}),
    _r("cwru_cross_load", "mc_dropout", {"accuracy": 0.9821}),
    _r("cwru_unseen_fault", "mc_dropout", {"accuracy": 1.0}, ood={"fault size 0.021 in": {"auroc_mi": 0.575}}),
    _r("sst2", "mc_dropout", {"accuracy": 0.7638, "ece": 0.0959},
       ood={"TREC questions": {"auroc_mi": 0.636, "auroc_total": 0.668}}, latency={"S=32": 2.87}),
    _r("sst2", "laplace", {"accuracy": 0.7638, "ece": 0.1005},
       ood={"TREC questions": {"auroc_mi": 0.811, "auroc_total": 0.659}}, latency={"S=32": 0.19}),
    _r("sst2", "laplace+ts", {"accuracy": 0.7638}, ood={"TREC questions": {"auroc_mi": 0.833}}),
    _r("cwru_in_domain", "laplace", {"accuracy": 1.0, "ece": float("nan")}),
]


def test_summary_rows_reproduce_the_readme_layout(tmp_path):
    rows = ub.summary_rows(RESULTS)
    assert rows[0] == ["MC dropout", "100.00 / 0.19", "98.21", "0.575", "64.2 / 0.757", "76.38 / 9.59",
                       "0.636 / 0.668", "1.03 / 2.87"]
    assert rows[1] == ["last-layer Laplace", "100.00 / –", "–", "–", "– / –", "76.38 / 10.05",
                       "0.811 / 0.659 (0.833 with T)", "– / 0.19"]
    assert len(rows) == 2 and all(len(r) == len(ub.SUMMARY_HEADERS) for r in rows)
    (tmp_path / "results.json").write_text(json.dumps({"settings": {}, "results": RESULTS}))
    with pytest.raises(SystemExit, match="provenance.json not found"):   # a results.json this script did not write
        ub.write_summary(tmp_path / "results.json", tmp_path / "s.json")
    from edgeuq.provenance import finish, is_script_provenance, start

    run = {"command": "python bench/uq_benchmark.py --cwru C --quick", "provenance": finish(start("quick"))}
    (tmp_path / "provenance.json").write_text(json.dumps(run))        # what the benchmark run writes
    out = ub.write_summary(tmp_path / "results.json", tmp_path / "s.json")
    doc = json.loads(out.read_text())
    assert doc["headers"] == ub.SUMMARY_HEADERS and doc["rows"] == rows
    assert doc["command"] == run["command"] and doc["provenance"] == run["provenance"]
    assert is_script_provenance(doc["provenance"]) is None
    assert ub.main(["--out", str(tmp_path), "--summary-json", str(tmp_path / "t.json"), "--summary-only"]) == 0
    assert json.loads((tmp_path / "t.json").read_text())["rows"] == rows


def test_readme_summary_headers_match_the_generator():
    assert json.loads((ROOT / "results" / "benchmark_uq.json").read_text())["headers"] == ub.SUMMARY_HEADERS
