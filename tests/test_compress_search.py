"""The search returns only non-dominated, in-budget points (checked by brute force) and resumes."""
import json
import math

import numpy as np

from edgeuq.compress.pareto import dominates, non_dominated
from edgeuq.compress.search import (
    OBJECTIVES, SearchBudgets, SearchResult, SearchSpace, choose_for_board, pareto_trials, run_search,
    save_search_result,
)

from require_extras import require_extra

require_extra("optuna", "search")  # skipped on a dev machine without it, a failure under CI=true


def _fake_metrics(params):
    """A cheap closed-form stand-in for the measured objectives, with real trade-offs."""
    keep = np.mean([params["keep0"], params["keep1"]])
    s = params["samples"]
    head_only = params["stochastic_from"] == 2
    lat = 0.2 + keep * (0.3 + (0.02 if head_only else 0.05) * s)
    acc = 0.7 + 0.28 * keep - 0.01 * (params["bytes_fraction"] < 0.5)
    auroc = 0.6 + 0.3 * (1 - math.exp(-s / 12)) + 0.05 * (not head_only) * keep
    nbytes = 100_000 * keep * params["bytes_fraction"]
    return {"latency_ms": lat, "accuracy": acc, "ood_auroc": auroc, "bytes": nbytes, "samples": s}


def test_non_dominated_matches_brute_force():
    rng = np.random.default_rng(0)
    pts = rng.integers(0, 5, size=(60, 3)).astype(float)
    senses = ["min", "max", "min"]
    got = set(non_dominated(pts, senses).tolist())
    want = {i for i in range(len(pts)) if not any(dominates(pts[j], pts[i], senses) for j in range(len(pts)))}
    assert got == want and 0 < len(got) < len(pts)
    assert dominates(np.array([1.0, 2.0, 0.0]), np.array([1.0, 1.0, 0.0]), senses)
    assert not dominates(np.array([1.0, 1.0, 0.0]), np.array([1.0, 1.0, 0.0]), senses)


def test_search_returns_only_non_dominated_points_within_budget_and_resumes(tmp_path):
    space = SearchSpace(depth=2, keep_ratios=(0.25, 0.5, 1.0), bytes_fractions=(1.0, 0.3), samples=(4, 16, 32))
    budgets = SearchBudgets(latency_ms=1.0, weight_bytes=60_000, mc_samples=16)
    calls = []

    def evaluate(number, params):
        calls.append(number)
        return _fake_metrics(params), f"trial{number}"

    journal = tmp_path / "search.journal"
    seeds = [{"keep0": 1.0, "keep1": 1.0, "stochastic_from": 2, "bytes_fraction": 0.3, "samples": 16}]
    first = run_search(space, evaluate, budgets, 12, journal, seed=0, population=4, enqueue=seeds, log=lambda s: None)
    assert len(first) == 12
    assert first[0].params == seeds[0]  # the enqueued (Fisher-guided) configuration ran first
    records = run_search(space, evaluate, budgets, 20, journal, seed=0, population=4, log=lambda s: None)
    assert len(records) == 20 and len(calls) == 20  # resumed: only 8 new evaluations

    front = pareto_trials(records)
    assert front
    for r in front:  # within every budget
        m = r.metrics
        assert m["latency_ms"] <= budgets.latency_ms and m["bytes"] <= budgets.weight_bytes
        assert m["samples"] <= budgets.mc_samples and r.feasible
    # brute force: nothing feasible dominates a front point, and every feasible non-dominated trial is in it
    senses = [s for _, s in OBJECTIVES]
    feasible = [r for r in records if all(
        (r.metrics["latency_ms"] <= 1.0, r.metrics["bytes"] <= 60_000, r.metrics["samples"] <= 16))]
    assert {r.number for r in feasible} == {r.number for r in records if r.feasible}
    for r in feasible:
        dominated = any(dominates(np.array(o.objectives()), np.array(r.objectives()), senses) for o in feasible)
        assert dominated == (r.number not in {f.number for f in front})
    assert any(not r.feasible for r in records)  # the budgets did bind

    pick = choose_for_board(front)
    res = save_search_result(tmp_path / "result", "test-board", budgets, records, front, pick, {"note": "fake"},
                             "fake objectives")
    back = SearchResult.load(tmp_path / "result")
    assert back.digest == res.digest and back.chosen == pick.number and set(back.pareto) == {r.number for r in front}
    assert (tmp_path / "result" / "pareto.png").stat().st_size > 1000
    env = json.loads((tmp_path / "result" / "search.json").read_text())
    assert env["kind"] == "compress_search"


def test_variant_builder_builds_the_requested_widths_and_stochastic_part(tmp_path):
    import torch

    from edgeuq.compress.variants import VariantBuilder, fisher_guided_seeds
    from edgeuq.models import ModelConfig, build_model
    from edgeuq.training import save_checkpoint
    from edgeuq_runtime.preprocess import zscore_windows

    cfg = ModelConfig(input_length=256, num_classes=3, patch=32, embed="conv", stem_channels=8, d_model=16, heads=4,
                      depth=2, ffn=16, stochastic_blocks=(1,), stochastic_head=True)
    torch.manual_seed(0)
    ck = save_checkpoint(build_model(cfg).eval(), tmp_path / "ck", ("a", "b", "c"), 12000.0)
    rng = np.random.default_rng(0)
    x = zscore_windows(rng.standard_normal((24, 256)).astype(np.float32))
    y = rng.integers(0, 3, 24)
    b = VariantBuilder(ck, (x, y), (x[:8], y[:8]), x[8:16], tmp_path / "trials", repeats=3)
    params = {"keep0": 0.5, "keep1": 0.25, "stochastic_from": 2, "bytes_fraction": 1.0, "samples": 4}
    model = b.build(params)
    assert [(s.heads, s.ffn) for s in model.cfg.blocks] == [(2, 8), (1, 4)]
    assert model.cfg.stochastic_blocks == () and model.cfg.stochastic_head
    assert [s.name for s in model.noise_specs()] == ["head_in", "head_hidden"]
    model2 = b.build({**params, "stochastic_from": 0})
    assert model2.cfg.stochastic_blocks == (0, 1)
    with torch.no_grad():  # same weights, only where the sampling happens differs
        assert torch.allclose(model(torch.from_numpy(x)), model2(torch.from_numpy(x)), atol=1e-6)
    metrics, bundle, attrs = b(0, params)
    assert set(metrics) == {"latency_ms", "accuracy", "ood_auroc", "bytes", "samples"}
    assert metrics["samples"] == 4 and metrics["bytes"] > 0 and 0 <= metrics["accuracy"] <= 1
    assert attrs["latency_measured_on"]["location"] == "host"  # timed here (no agent, no tracker)
    space = SearchSpace(depth=2)
    seeds = fisher_guided_seeds(b, space)
    assert seeds and all(set(s) == {"keep0", "keep1", "stochastic_from", "bytes_fraction", "samples"} for s in seeds)
    assert all(s[f"keep{i}"] in space.keep_ratios for s in seeds for i in range(2))


def test_failed_trials_are_counted_listed_with_reasons_and_saved(tmp_path):
    from edgeuq.compress.search import FailedTrial, run_search_with_failures

    space = SearchSpace(depth=2, keep_ratios=(0.25, 0.5, 1.0), bytes_fractions=(1.0, 0.3), samples=(4, 16, 32))
    budgets = SearchBudgets(latency_ms=1.0, weight_bytes=60_000, mc_samples=16)
    raised = {}

    def evaluate(number, params):
        if params["samples"] == 32:  # this configuration cannot be built
            raised[number] = dict(params)
            raise RuntimeError(f"export failed for S={params['samples']}")
        return _fake_metrics(params), f"trial{number}"

    lines = []
    journal = tmp_path / "search.journal"
    records, failed = run_search_with_failures(space, evaluate, budgets, 10, journal, seed=0, population=4,
                                               log=lines.append)
    assert len(records) == 10 and raised  # failures do not count towards the 10
    # every failure is listed, with its parameters and reason -- against what the trial function saw
    assert {f.number: dict(f.params) for f in failed} == raised
    assert all(isinstance(f, FailedTrial) and f.error == "RuntimeError: export failed for S=32" for f in failed)
    assert not {f.number for f in failed} & {r.number for r in records}
    summary = lines[-1]
    assert summary.startswith(f"search: 10 trials finished, {len(raised)} failed")
    assert all(f"failed trial {n} " in summary for n in raised)
    # resuming reads the earlier failures back from the journal
    again, failed_again = run_search_with_failures(space, evaluate, budgets, 10, journal, seed=0, population=4,
                                                   log=lambda s: None)
    assert len(again) == 10 and [f.to_dict() for f in failed_again] == [f.to_dict() for f in failed]
    # the artifact keeps the count and the reasons
    front = pareto_trials(records)
    res = save_search_result(tmp_path / "result", "test-board", budgets, records, front, choose_for_board(front),
                             {}, "fake", failed=failed)
    back = SearchResult.load(tmp_path / "result")
    meta = back.to_meta()
    assert "failed_trials" in (tmp_path / "result" / "search.json").read_text()
    assert meta["failed_count"] == len(raised) and back.failed == res.failed
    assert [t["error"] for t in meta["failed_trials"]] == ["RuntimeError: export failed for S=32"] * len(raised)
    from edgeuq.compress.cli import search_tables_json

    assert f"{len(raised)} failed" in search_tables_json(meta)["note"]
