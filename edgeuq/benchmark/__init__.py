"""Side-by-side benchmark of the stochastic schemes on CWRU and SST-2/TREC splits.

``run_benchmark(out_dir, cwru_dir=..., text_dir=...)`` trains (or loads from
``out_dir``) one model per scheme and task, exports and bundles each one, scores
it through the device runtime (accuracy, NLL, Brier, ECE, AURC, accuracy at 90 %
coverage, OOD AUROC/AUPR/FPR95 with MI and total entropy, noise-shift sweep,
latency for several S) and writes ``tables.md`` + ``results.json``.
"""
from .runner import VariantResult, evaluate_variant, run_benchmark
from .settings import SCHEME_NAMES, BenchmarkSettings
from .tasks import Task, bearing_tasks, text_task

__all__ = ["BenchmarkSettings", "SCHEME_NAMES", "Task", "VariantResult", "bearing_tasks", "text_task",
           "evaluate_variant", "run_benchmark"]
