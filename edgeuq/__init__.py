"""edgeuq: edge deployment toolchain for uncertainty-aware transformers.

The public API, one name per stage and artifact (imported lazily: ``import edgeuq`` stays
fast because torch is only loaded when a name that needs it is first used)::

    import edgeuq
    recipe = edgeuq.get_recipe("bearing-demo")
    data = edgeuq.prepare_data(recipe)                                  # data
    ckpt = edgeuq.train_stage(data.splits, cfg, tcfg, "runs/x/ckpt")    # -> Checkpoint
    onnx = edgeuq.export_onnx(ckpt, "runs/x/onnx")                      # -> OnnxArtifact
    bundle = edgeuq.build_bundle(onnx, "runs/x/bundle", "m", "0.1.0")   # -> runtime Bundle
    report = edgeuq.estimate_fisher(ckpt.load_model(), x, y).save(...)  # -> FisherReport
    result = edgeuq.quantize_checkpoint(ckpt, report, budget, ...)      # -> QuantPlan + bundle
    compiled = edgeuq.compile_board(board, onnx, "runs/x/board")        # -> CompiledArtifact
    edgeuq.evaluate_bundle(bundle.root, "data/")                        # metrics through the runtime

Every artifact derives from :class:`edgeuq.Artifact` (versioned, hashed, atomic, verified).
"""
from __future__ import annotations

import importlib
from typing import Any, Dict, Tuple

__version__ = "0.1.0"

# public name -> (module, attribute); resolved on first access
_API: Dict[str, Tuple[str, str]] = {
    # artifacts (edgeuq.artifact) and their loaders
    "Artifact": ("edgeuq.artifact", "Artifact"),
    "ArtifactError": ("edgeuq.artifact", "ArtifactError"),
    "ArtifactWriter": ("edgeuq.artifact", "ArtifactWriter"),
    "cached": ("edgeuq.artifact", "cached"),
    "digest_of": ("edgeuq.artifact", "digest_of"),
    "Checkpoint": ("edgeuq.training", "Checkpoint"),
    "load_checkpoint": ("edgeuq.training", "load_checkpoint"),
    "save_checkpoint": ("edgeuq.training", "save_checkpoint"),
    "OnnxArtifact": ("edgeuq.export", "OnnxArtifact"),
    "load_onnx_artifact": ("edgeuq.export", "load_onnx_artifact"),
    "FisherReport": ("edgeuq.fisher", "FisherReport"),
    "load_fisher_report": ("edgeuq.fisher", "load_fisher_report"),
    "QuantPlan": ("edgeuq.quantize", "QuantPlan"),
    "load_quant_plan": ("edgeuq.quantize", "load_quant_plan"),
    "CompiledArtifact": ("edgeuq.lower", "CompiledArtifact"),
    "Bundle": ("edgeuq_runtime.bundle", "Bundle"),
    "load_bundle": ("edgeuq_runtime.bundle", "load_bundle"),
    # configuration and catalog
    "ModelConfig": ("edgeuq.models", "ModelConfig"),
    "TrainConfig": ("edgeuq.training", "TrainConfig"),
    "FisherConfig": ("edgeuq.fisher", "FisherConfig"),
    "QuantSettings": ("edgeuq.quantize", "QuantSettings"),
    "Budget": ("edgeuq.quantize", "Budget"),
    "get_recipe": ("edgeuq.catalog", "get_recipe"),
    "get_board": ("edgeuq.catalog", "get_board"),
    # data
    "DataOptions": ("edgeuq.data.sources", "DataOptions"),
    "resolve_data_source": ("edgeuq.data.sources", "resolve_data_source"),
    "training_splits": ("edgeuq.data.sources", "training_splits"),
    # stages
    "prepare_data": ("edgeuq.pipeline", "prepare_data"),
    "train_stage": ("edgeuq.pipeline", "train_stage"),
    "export_stage": ("edgeuq.pipeline", "export_stage"),
    "bundle_stage": ("edgeuq.pipeline", "bundle_stage"),
    "latency_stage": ("edgeuq.pipeline", "latency_stage"),
    "run_demo": ("edgeuq.pipeline", "run_demo"),
    "export_onnx": ("edgeuq.export", "export_onnx"),
    "build_bundle": ("edgeuq.bundle", "build_bundle"),
    "estimate_fisher": ("edgeuq.fisher", "estimate_fisher"),
    "allocate": ("edgeuq.quantize", "allocate"),
    "quantize_checkpoint": ("edgeuq.quantize", "quantize_checkpoint"),
    "compile_board": ("edgeuq.lower.compile", "compile_board"),
    "distill_stage": ("edgeuq.compress.stages", "distill_stage"),
    "train_text_teacher": ("edgeuq.text.pipeline", "train_text_teacher"),
    "TeacherOptions": ("edgeuq.text.pipeline", "TeacherOptions"),
    "TextTeacher": ("edgeuq.text.pipeline", "TextTeacher"),
    "evaluate_bundle": ("edgeuq.evaluate", "evaluate_bundle"),
    "evaluate_sets": ("edgeuq.evaluate", "evaluate_sets"),
    # profiling
    "measure": ("edgeuq.profile", "measure"),
    "measure_stages": ("edgeuq.profile", "measure_stages"),
    "compare": ("edgeuq.profile", "compare"),
    "paired_ratio": ("edgeuq.profile", "paired_ratio"),
    "PairedRatio": ("edgeuq.profile", "PairedRatio"),
    "LatencyStats": ("edgeuq.profile", "LatencyStats"),
    "StageTimer": ("edgeuq.profile", "StageTimer"),
    "LatencyReport": ("edgeuq.profile.report", "LatencyReport"),
    "profile_bundle": ("edgeuq.profile.bundle_profile", "profile_bundle"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'edgeuq' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # cache: the next access is a plain attribute
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_API))
