"""Module-level evaluators and worker entry points for the distributed-search tests (spawned
worker processes import them by name)."""
from __future__ import annotations

import time
from typing import Any, Mapping

from edgeuq.compress.search import SearchBudgets, SearchSpace, run_search_with_failures

SPACE = SearchSpace(depth=2, keep_ratios=(0.25, 0.5, 0.75, 1.0), stochastic_from=(0, 1, 2),
                    bytes_fractions=(1.0, 0.5, 0.3), samples=(8, 16, 32))


def metrics_of(params: Mapping[str, Any]) -> dict:
    """A closed form of the parameters (the independent reference the tests compare with)."""
    keep = sum(float(params[f"keep{i}"]) for i in range(2))
    s = float(params["samples"])
    return {"latency_ms": keep * s / 10.0, "accuracy": 0.5 + keep / 4.0, "ood_auroc": 0.5 + s / 100.0,
            "bytes": 1000.0 * keep * float(params["bytes_fraction"]), "samples": s}


def evaluate(number: int, params: Mapping[str, Any], delay_s: float = 0.0):
    if delay_s:
        time.sleep(delay_s)
    return metrics_of(params), f"trial{number}"


def slow_evaluate(number: int, params: Mapping[str, Any]):
    return evaluate(number, params, 0.4)


def hang_evaluate(number: int, params: Mapping[str, Any]):
    time.sleep(3600)  # the test kills this worker mid-trial
    raise AssertionError("unreachable")


def worker(storage_spec: str, n_trials: int, evaluator: str, heartbeat_s: int, grace_s: int, index: int) -> None:
    from edgeuq.compress.distributed import open_storage

    storage = open_storage(storage_spec, heartbeat_s=heartbeat_s, grace_s=grace_s)
    run_search_with_failures(SPACE, globals()[evaluator], SearchBudgets(), n_trials, storage, seed=index,
                             population=4, study_name="toy", log=lambda m: None)


def report_env(path: str, names, index: int) -> None:
    """Write the worker's values of ``names``, its session and its pid to ``path``.INDEX."""
    import json
    import os

    with open(f"{path}.{index}", "w") as f:
        json.dump({"env": {n: os.environ.get(n) for n in names}, "sid": os.getsid(0), "pid": os.getpid()}, f)
