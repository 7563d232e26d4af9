"""The UQ benchmark's building blocks on a toy task (the full benchmark is not run in CI)."""
import dataclasses

import numpy as np
import pytest
import torch

from edgeuq.benchmark import SCHEME_NAMES, BenchmarkSettings, Task, evaluate_variant
from edgeuq.benchmark.schemes import scheme_config, temperature_checkpoint, trained_checkpoint
from edgeuq.benchmark.tables import format_tables
from edgeuq.cli import build_parser


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models train faster on one thread (and do not oversubscribe a shared CI box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.mark.slow
def test_schemes_train_cache_export_evaluate_and_tabulate(tmp_path):
    task, s = _task(), _settings()
    logs = []
    results = []
    for scheme in ("mc_dropout", "ensemble", "laplace"):
        ck = trained_checkpoint(scheme, task, s, tmp_path, progress=False, log=logs.append)
        results.append(evaluate_variant(task, scheme, ck, tmp_path / scheme, s, scheme == "mc_dropout", False))
        ts = temperature_checkpoint(ck, scheme, task, s, tmp_path)
        assert ts.config.temperature > 0 and "temperature" in ts.metrics
        results.append(evaluate_variant(task, f"{scheme}+ts", ts, tmp_path / f"{scheme}+ts", s, False, False))
    # cache: a second request loads instead of training; the Laplace model reused ensemble member 0
    again = trained_checkpoint("mc_dropout", task, s, tmp_path, progress=False, log=logs.append)
    assert "toy/mc_dropout: cached" in logs and again.metrics["cache_key"]
    assert sum("training ensemble member" in m for m in logs) == s.ensemble_members
    r = results[0]
    assert {"accuracy", "nll", "brier", "ece", "aurc", "acc_at_90"} <= set(r.test)
    assert {"auroc_mi", "aupr_mi", "fpr95_mi", "auroc_total"} <= set(r.ood["noise"])
    assert "accuracy" in r.shifts["noisy"] and set(r.latency_ms) == {"deterministic", "S=1", "S=4"}
    text = format_tables(results, [task], s, 12.0)
    assert "## toy" in text and "mc_dropout+ts" in text and "Latency" in text and "AUROC MI (noise)" in text
