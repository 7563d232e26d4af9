"""Compression steps: one registry, one file per step.

A step takes a model and returns a new one (the input is left unchanged)::

    model ─step(model, data, options)─► StepResult(model, info)

Built-ins (``distill``, ``prune``, ``lowrank``) are found by scanning this package: a new step
is one module here (or a third-party module under the ``edgeuq.compress_step`` entry-point
group) holding a class decorated with ``@COMPRESSION_STEPS.register("name")`` that declares its
frozen ``Options`` dataclass and implements ``apply``. The one driver is
:func:`edgeuq.compress.chain.run_chain`: it runs a recipe's ``[[compress.steps]]`` (or
``edgeuq compress --steps``) in order, options read strictly (an unknown key names itself), times
each step and saves each output as a cached checkpoint. A step that changes the
architecture records it in the output model's ``cfg`` (``blocks`` for pruned widths, ``ranks``
for factorised layers), so ``build_model(cfg)`` rebuilds it from a checkpoint.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, Union

import numpy as np
from torch import nn

from ...registry import Registry, scan_package

__all__ = ["CompressionStep", "StepData", "StepResult", "COMPRESSION_STEPS", "get_step", "step_options"]


@dataclass(frozen=True, eq=False)
class StepData:
    """What a step may read: calibration/training windows ``x`` (N, L) with labels ``y`` (or None),
    validation windows, and a teacher labeller ``(x, samples, seed) -> (S, N, C) probabilities``
    (distillation needs one; :class:`edgeuq.compress.stages.Teacher` has ``label``)."""

    x: np.ndarray
    y: Optional[np.ndarray] = None
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    teacher: Optional[Callable[[np.ndarray, int, int], np.ndarray]] = None
    #: the teacher's pooled trunk features ``(x) -> (N, d)`` (feature distillation) and what it is
    #: (``{"teacher": source, "teacher_digest": digest}``, recorded with a kept transfer set)
    features: Optional[Callable[[np.ndarray], np.ndarray]] = None
    teacher_info: Mapping[str, Any] = field(default_factory=dict)
    #: token windows: the tokenizer whose ids ``x`` / ``x_val`` are (a step that changes the vocabulary
    #: reads it; :func:`~edgeuq.compress.chain.run_chain` sets it to the current model's and maps the ids)
    tokenizer: Optional[Any] = None
    #: the teacher's hidden states ``(ids (B, T) tensor) -> [embedding output, layer 0, ..., layer L-1]``
    #: (each (B, T, d), no gradients) for hidden-state distillation (``distill``'s ``hidden_weight``)
    teacher_hidden: Optional[Callable[[Any], Sequence[Any]]] = None
    #: the teacher's density feature ``(ids (B, T) tensor) -> (B, d)`` (no gradients), e.g. its
    #: pretrained encoder's Avg-Avg, for density-feature matching (``distill``'s ``density_weight``)
    teacher_density: Optional[Callable[[Any], Any]] = None
    progress: bool = False
    log: Callable[[str], None] = field(default=lambda s: None)


@dataclass(frozen=True, eq=False)
class StepResult:
    """The new model, what the step reports (``info``, JSON values) and its companion artifacts:
    ``{name: write(directory, parent checkpoint) -> Artifact}`` (a prune plan, a transfer set),
    written by the chain next to the step's checkpoint."""

    model: nn.Module
    info: Mapping[str, Any]
    companions: Mapping[str, Callable[[Any, Any], Any]] = field(default_factory=dict)
    #: files describing the new model's input, written beside its checkpoint (``{name: write(path)}``,
    #: e.g. a pruned ``tokenizer.json``); the chain otherwise carries the parent's such files along
    files: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


class CompressionStep:
    """Base of a compression step. Subclasses set ``Options`` (a frozen dataclass; its
    ``__post_init__`` validates) and implement :meth:`apply`."""

    name: ClassVar[str] = ""
    Options: ClassVar[type]
    #: True for a step that reads token windows and their tokenizer (``StepData.tokenizer``)
    needs_tokenizer: ClassVar[bool] = False

    def apply(self, model: nn.Module, data: StepData, options: Any) -> StepResult:  # pragma: no cover - abstract
        raise NotImplementedError


def _check(name: str, step: Any) -> None:
    opts = getattr(step, "Options", None)
    if not isinstance(step, CompressionStep) or not (isinstance(opts, type) and dataclasses.is_dataclass(opts)
                                                     and opts.__dataclass_params__.frozen):
        raise TypeError(f"compression step {name!r} must be a CompressionStep with a frozen dataclass Options, "
                        f"got {step!r}")


COMPRESSION_STEPS: Registry[CompressionStep] = Registry("compress_step", instantiate=True, check=_check,
                                                        label="compression step")


def get_step(name: str) -> CompressionStep:
    return COMPRESSION_STEPS.get(name)


def step_options(step: CompressionStep, options: Union[None, Mapping[str, Any], Any] = None) -> Any:
    """``options`` as the step's ``Options``: an instance passes, a mapping is read strictly (an
    unknown key is an error naming it and the known ones)."""
    if isinstance(options, step.Options):
        return options
    given = dict(options or {})
    known = {f.name for f in dataclasses.fields(step.Options)}
    unknown = sorted(set(given) - known)
    if unknown:
        raise ValueError(f"compression step {step.name!r}: unknown option(s) {unknown}; known: {sorted(known)}")
    return step.Options(**given)


scan_package(__name__, __path__)
