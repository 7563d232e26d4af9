"""The UQ benchmark's building blocks on a toy task (the full benchmark is not run in CI)."""
import dataclasses

import numpy as np
import pytest
import torch

from edgeuq.benchmark import SCHEME_NAMES, BenchmarkSettings, Task, evaluate_variant
from edgeuq.benchmark.schemes import scheme_config, temperature_checkpoint, trained_checkpoint
from edgeuq.benchmark.tables import format_tables
from edgeuq.cli import build_parser


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _toy(n, seed, length=128):
    rng = np.random.default_rng(seed)
    t = np.arange(length) / length
    y = rng.integers(0, 3, n)
    x = np.sin(2 * np.pi * (4 + 8 * y)[:, None] * t + rng.uniform(0, 6, (n, 1))) + 0.3 * rng.standard_normal((n, length))
    x = (x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)
    return x.astype(np.float32), y


def _task() -> Task:
    ood = np.random.default_rng(9).standard_normal((24, 128)).astype(np.float32)
    test = _toy(48, 2)
    return Task("toy", ("a", "b", "c"), _toy(192, 0), _toy(48, 1), test, 1000.0, "zscore", "toy sinusoids",
                shifts={"noisy": (test[0] + np.float32(0.5), test[1])}, ood={"noise": ood})


def _settings() -> BenchmarkSettings:
    q = BenchmarkSettings.quick()
    return dataclasses.replace(
        q, bearing_model={**q.bearing_model, "patch": 16}, samples=4, val_samples=2, latency_repeats=2,
        latency_samples=(1, 4), bearing_train={**q.bearing_train, "epochs": 1})


def test_every_scheme_has_a_valid_config():
    task, s = _task(), BenchmarkSettings()
    schemes = {name: scheme_config(name, task, s).scheme for name in SCHEME_NAMES}
    assert schemes == {"mc_dropout": "mc_dropout", "mc_dropout_attn": "mc_dropout", "variational": "variational",
                       "hsa": "hsa", "ensemble": "ensemble", "laplace": "laplace"}
    with pytest.raises(ValueError, match="unknown scheme"):
        scheme_config("dropconnect", task, s)


def test_cli_registers_evaluate_and_benchmark():
    sub = build_parser()._subparsers._group_actions[0].choices
    assert {"evaluate", "benchmark-uq"} <= set(sub)


def _entropy(p):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)


def _ece_loop(probs, labels, bins=10):
    conf, pred = probs.max(1), probs.argmax(1)
    total = 0.0
    for b in range(bins):
        sel = [i for i in range(len(conf)) if b / bins < conf[i] <= (b + 1) / bins]
        if sel:
            total += len(sel) / len(conf) * abs(np.mean([pred[i] == labels[i] for i in sel]) - np.mean(conf[sel]))
    return total


def _pairs_auroc(s_in, s_out):
    diff = s_out[:, None] - s_in[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def _fpr95_brute(s_in, s_out):
    """Smallest in-distribution FPR over every threshold that flags >= 95 % of the OOD scores."""
    return min(float(np.mean(s_in >= t)) for t in s_out if np.mean(s_out >= t) >= 0.95)


def _aupr_brute(s_in, s_out):
    """Average precision over the distinct thresholds (flag OOD when score >= t)."""
    ap, prev_recall = 0.0, 0.0
    for t in sorted(set(np.concatenate([s_in, s_out]).tolist()), reverse=True):
        tp, fp = np.sum(s_out >= t), np.sum(s_in >= t)
        recall = tp / len(s_out)
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return float(ap)


def _recomputed(sample_probs, labels=None):
    """Every test-set metric from the (S, N, C) sampled probabilities with plain formulas."""
    sp = sample_probs.astype(np.float64)
    mean = sp.mean(0)
    total, aleatoric = _entropy(mean), _entropy(sp).mean(0)
    out = {"mean_total": total.mean(), "mean_aleatoric": aleatoric.mean(),
           "mean_epistemic": np.maximum(total - aleatoric, 0).mean()}
    scores = {"mi": np.maximum(total - aleatoric, 0), "total": total}
    if labels is not None:
        y = labels
        conf, correct = mean.max(1), mean.argmax(1) == y
        assert len(np.unique(conf)) == len(conf)           # no ties: a plain sort is the ranking
        ranked = correct[np.argsort(-conf)]
        k = np.arange(1, len(y) + 1)
        out.update(accuracy=correct.mean(), nll=-np.mean(np.log(mean[np.arange(len(y)), y])),
                   brier=np.mean(np.sum((mean - np.eye(mean.shape[1])[y]) ** 2, 1)), ece=_ece_loop(mean, y),
                   aurc=np.mean(np.cumsum(~ranked) / k), acc_at_90=ranked[: int(np.ceil(0.9 * len(y)))].mean())
    return out, scores


SCHEMES_RUN = ("mc_dropout", "variational", "hsa", "ensemble", "laplace")


@pytest.mark.slow
def test_schemes_train_cache_export_evaluate_and_tabulate(tmp_path):
    """Every scheme (variational and HSA included) trains, exports, bundles and is scored by the
    device runtime; each reported number is recomputed from the runtime's sampled probabilities
    with independent formulas (brute-force AUROC/AUPR/FPR95, looped ECE, sorted AURC)."""
    from edgeuq.evaluate import run_runtime
    from edgeuq_runtime import UncertaintyRuntime

    task, s = _task(), _settings()
    logs = []
    results = {}
    for scheme in SCHEMES_RUN:
        ck = trained_checkpoint(scheme, task, s, tmp_path, progress=False, log=logs.append)
        results[scheme] = evaluate_variant(task, scheme, ck, tmp_path / scheme, s, scheme == "mc_dropout", False)
        ts = temperature_checkpoint(ck, scheme, task, s, tmp_path)
        assert ts.config.temperature > 0 and "temperature" in ts.metrics
        results[f"{scheme}+ts"] = evaluate_variant(task, f"{scheme}+ts", ts, tmp_path / f"{scheme}+ts", s, False,
                                                   False)
    # cache: a second request loads instead of training; the Laplace model reused ensemble member 0
    again = trained_checkpoint("mc_dropout", task, s, tmp_path, progress=False, log=logs.append)
    assert "toy/mc_dropout: cached" in logs and again.metrics["cache_key"]
    members = s.variants["ensemble"]["scheme_options"]["members"]
    assert sum("training ensemble member" in m for m in logs) == members
    # each scheme's own noise inputs reached the bundle
    noise = {k: set(r.info["noise_inputs"]) for k, r in results.items()}
    assert {"block1_attn_qkv", "block1_ffn_fc1", "head_fc1", "head_fc2"} <= noise["variational"]
    assert noise["hsa"] == {"block1_attn_gumbel", "block1_centroid_gumbel"}
    assert noise["ensemble"] == {"ensemble_member"} and noise["laplace"] == {"head_laplace"}
    assert {"block1_attn_out", "head_in"} <= noise["mc_dropout"]
    for variant, r in results.items():
        rt = UncertaintyRuntime(tmp_path / variant / "bundle", threads=1, seed=0)
        test = run_runtime(rt, task.test[0], s.samples, seed=0)
        expected, ref = _recomputed(test.samples, task.test[1])
        assert set(r.test) == set(expected) | {"n", "flagged_inputs"} and r.test["n"] == len(task.test[1])
        assert r.test["flagged_inputs"] == 0          # no flat or clipped window in this toy test set
        for key, value in expected.items():
            assert r.test[key] == pytest.approx(value, abs=1e-9), (variant, key)
        ood = run_runtime(rt, task.ood["noise"], s.samples, seed=1)
        exp_ood, out = _recomputed(ood.samples)
        for tag in ("mi", "total"):
            assert r.ood["noise"][f"auroc_{tag}"] == pytest.approx(_pairs_auroc(ref[tag], out[tag]), abs=1e-12)
            assert r.ood["noise"][f"aupr_{tag}"] == pytest.approx(_aupr_brute(ref[tag], out[tag]), abs=1e-9)
            assert r.ood["noise"][f"fpr95_{tag}"] == pytest.approx(_fpr95_brute(ref[tag], out[tag]), abs=1e-12)
        assert r.ood["noise"]["mean_epistemic"] == pytest.approx(exp_ood["mean_epistemic"], abs=1e-9)
        shifted = run_runtime(rt, task.shifts["noisy"][0], s.samples, seed=2)
        exp_shift, _ = _recomputed(shifted.samples, task.shifts["noisy"][1])
        for key, value in exp_shift.items():
            assert r.shifts["noisy"][key] == pytest.approx(value, abs=1e-9), (variant, "noisy", key)
    assert set(results["mc_dropout"].latency_ms) == {"deterministic", "S=1", "S=4"}
    text = format_tables(list(results.values()), [task], s, 12.0)
    assert "## toy" in text and "mc_dropout+ts" in text and "Latency" in text and "AUROC MI (noise)" in text
    for scheme in SCHEMES_RUN:
        assert f"| {scheme} " in text or f"| {scheme}|" in text, scheme
