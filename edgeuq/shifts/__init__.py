"""The shift suite (`edgeuq shifts`): leak-free whole-recording splits, shifts a diagnosis should
generalise over (accuracy, false abstention) and shifts it should flag (AUROC, FPR at 95 % TPR,
abstention) for any number of deployed models, every uncertainty score side by side."""
from .protocol import LeakError, ProtocolData, ShiftProtocol, assert_leak_free, build_protocol_data
from .sets import SetOptions, ShiftSet, Skipped, build_sets
from .suite import SCORE_NAMES, SuiteOptions, evaluate_model, pick_rule, rule_candidates, set_device_rule

__all__ = ["ShiftProtocol", "ProtocolData", "build_protocol_data", "assert_leak_free", "LeakError", "SetOptions",
           "ShiftSet", "Skipped", "build_sets", "SuiteOptions", "evaluate_model", "pick_rule", "rule_candidates",
           "set_device_rule", "SCORE_NAMES", "run_suite", "suite_tables"]


def __getattr__(name):
    if name in ("run_suite", "suite_tables"):
        from . import run

        return getattr(run, name)
    raise AttributeError(name)
