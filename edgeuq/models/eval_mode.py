"""Run a module in eval mode without gradient, restoring its train/eval mode afterwards.

The one copy of "read a network's outputs in the middle of training" (teachers' features during
distillation, a student's pooled features for a projection, the GP inputs of SNGP, the frozen
embeddings of the text cache): dropout and sampling sites off, no graph, and the caller's mode
back even when the block raises.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import torch
from torch import nn

__all__ = ["evaluating", "frozen_call"]

M = TypeVar("M", bound=nn.Module)
T = TypeVar("T")


@contextmanager
def evaluating(module: M, grad: bool = False) -> Iterator[M]:
    """``module`` in eval mode for the block (no gradient unless ``grad``); its mode restored after."""
    was = module.training
    module.eval()
    try:
        with torch.set_grad_enabled(grad):
            yield module
    finally:
        module.train(was)


def frozen_call(module: nn.Module, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` wrapped to run under :func:`evaluating` ``(module)`` on every call."""
    def call(*args, **kwargs) -> T:
        with evaluating(module):
            return fn(*args, **kwargs)
    return call
