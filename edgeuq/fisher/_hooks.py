"""One streamed pass with forward hooks, shared by the estimators that need
gradients with respect to *intermediate* tensors (layer inputs and outputs,
multiplicative structure masks) rather than parameters.

Per-sample gradients of intermediates need no vmap: samples do not interact, so
the gradient of the summed loss with respect to row n of a tensor is sample n's
own gradient. ``torch.autograd.grad`` is asked for exactly the tapped tensors
(no parameter gradients are formed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from ._target import FisherTarget, calibration_batches, check_labels_needed, label_draws, passes
from .config import FisherConfig
from .per_sample import nll_terms

__all__ = ["Tap", "io_taps", "Accumulator", "run_hooked_pass"]


@dataclass(frozen=True)
class Tap:
    """A tensor to read at a module: its ``input`` (first positional argument)
    or its ``output``. With ``groups`` > 0 the tensor is multiplied by a
    per-sample mask of ones, shape (B, groups), each group covering
    ``group_size`` consecutive channels of axis ``dim``; the tap's gradient is
    then the mask gradient ∂ℓ_n/∂m."""

    key: str
    module: str
    where: str  # "input" | "output"
    groups: int = 0
    group_size: int = 1
    dim: int = -1

    def __post_init__(self) -> None:
        if self.where not in ("input", "output"):
            raise ValueError(f"tap {self.key!r}: where must be 'input' or 'output', got {self.where!r}")


def io_taps(prefix: str, layers: Sequence[str]) -> List[Tap]:
    """The input and the output of each layer, keyed ``PREFIX:in:LAYER`` and ``PREFIX:out:LAYER``."""
    return [t for n in layers for t in (Tap(f"{prefix}:in:{n}", n, "input"), Tap(f"{prefix}:out:{n}", n, "output"))]


class Accumulator(Protocol):
    def taps(self) -> Sequence[Tap]: ...

    def on_forward(self, tensors: Dict[str, torch.Tensor]) -> None: ...

    def on_backward(self, grads: Dict[str, torch.Tensor], weights: torch.Tensor) -> None: ...


def _apply_mask(t: torch.Tensor, tap: Tap) -> tuple:
    b = t.shape[0]
    dim = tap.dim % t.dim()
    channels = t.shape[dim]
    if tap.groups * tap.group_size != channels:
        raise ValueError(
            f"tap {tap.key!r}: {tap.groups} groups x {tap.group_size} != {channels} channels on axis {dim} "
            f"of {tuple(t.shape)}"
        )
    mask = torch.ones(b, tap.groups, dtype=t.dtype, requires_grad=True)
    expanded = mask.repeat_interleave(tap.group_size, dim=1)
    view = [b] + [1] * (t.dim() - 1)
    view[dim] = channels
    return t * expanded.view(view), mask


class _Capture:
    def __init__(self, model: nn.Module, taps: Sequence[Tap]) -> None:
        modules = dict(model.named_modules())
        self.tensors: Dict[str, torch.Tensor] = {}
        self.handles = []
        for tap in taps:
            if tap.module not in modules:
                raise KeyError(f"tap {tap.key!r}: model has no module {tap.module!r}")
            m = modules[tap.module]
            if tap.where == "input":
                self.handles.append(m.register_forward_pre_hook(self._pre_hook(tap)))
            else:
                self.handles.append(m.register_forward_hook(self._post_hook(tap)))

    def _pre_hook(self, tap: Tap):
        def hook(module, args):
            t = args[0]
            if tap.groups:
                t, mask = _apply_mask(t, tap)
                self.tensors[tap.key] = mask
                return (t, *args[1:])
            self.tensors[tap.key] = t
            return None

        return hook

    def _post_hook(self, tap: Tap):
        def hook(module, args, out):
            if tap.groups:
                out, mask = _apply_mask(out, tap)
                self.tensors[tap.key] = mask
                return out
            self.tensors[tap.key] = out
            return None

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run_hooked_pass(
    model: nn.Module,
    x: np.ndarray,
    y: Optional[np.ndarray],
    cfg: FisherConfig,
    accumulators: Sequence[Accumulator],
    desc: str = "Fisher (activations)",
) -> int:
    """Stream the calibration set once; return the number of (input, noise) terms."""
    check_labels_needed(cfg, y)
    target = FisherTarget(model)
    taps: List[Tap] = [t for a in accumulators for t in a.taps()]
    keys = [t.key for t in taps]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate tap keys: {keys}")
    rng = np.random.default_rng(cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    n_terms = 0
    cap = _Capture(model, taps)
    try:
        with target.evaluating():
            for xb, yb in calibration_batches(x, y, cfg.batch_size, cfg.progress, desc):
                if xb.is_floating_point():
                    xb.requires_grad_(True)  # so that even the first layer's input is in the graph
                for _ in range(passes(target, cfg)):
                    cap.tensors.clear()
                    logits = target.logits(xb, target.draw_noise(len(xb), rng))
                    tensors = dict(cap.tensors)
                    missing = [k for k in keys if k not in tensors]
                    if missing:
                        raise RuntimeError(f"taps never reached in the forward pass: {missing}")
                    for a in accumulators:
                        a.on_forward({k: v.detach() for k, v in tensors.items()})
                    for draw in label_draws(logits, yb, cfg, gen):
                        loss = nll_terms(logits, draw.labels).sum()
                        grads = torch.autograd.grad(loss, [tensors[k] for k in keys], retain_graph=True)
                        gd = dict(zip(keys, grads))
                        for a in accumulators:
                            a.on_backward(gd, draw.weights)
                    n_terms += len(xb)
    finally:
        cap.close()
    return n_terms
