"""Per-sample gradient estimators: how the diagonal Fisher takes ∂/∂θ (−log p(y_n | x_n, ε_n)).

One interface (laplace-torch's curvature backends are the model): an estimator is a
:class:`PerSampleGradients` registered by name in :data:`PER_SAMPLE_GRADIENTS`
(:class:`edgeuq.registry.Registry`, kind ``per_sample_gradient``: the decorator here, or the
``edgeuq.per_sample_gradient`` entry point group for a third party). ``FisherConfig.per_sample``
names one; the Fisher code looks it up and never compares the names.

``vmap``
    ``torch.func`` ``vmap(grad(...))``: one batched pass (the default);
``loop``
    one backward pass per sample: the slow, obviously-correct reference.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Dict, final

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover  (config.py imports this module, and _target.py imports config.py)
    from ._target import FisherTarget, Noise

__all__ = ["PerSampleGradients", "PER_SAMPLE_GRADIENTS", "get_per_sample", "DEFAULT_PER_SAMPLE", "nll_terms"]

#: the estimator a FisherConfig uses unless told otherwise
DEFAULT_PER_SAMPLE = "vmap"


def nll_terms(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample −log p(y|x), shape (B,): the loss every estimator differentiates."""
    return F.cross_entropy(logits, labels, reduction="none")


class PerSampleGradients(ABC):
    """Per-sample gradients of the NLL: tensors of shape ``(B, *param.shape)`` per parameter name."""

    name: ClassVar[str] = ""

    @abstractmethod
    def __call__(self, target: FisherTarget, x: torch.Tensor, noise: Noise,
                 labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        """∂/∂θ (−log p(y_n | x_n, ε_n)) for every sample n."""


def _check(name: str, value: Any) -> None:
    if not isinstance(value, PerSampleGradients):
        raise TypeError(f"per-sample gradient estimator {name!r} must be a PerSampleGradients, "
                        f"got {type(value).__name__}")


#: name -> per-sample gradient estimator
PER_SAMPLE_GRADIENTS: Registry[PerSampleGradients] = Registry(
    "per_sample_gradient", instantiate=True, check=_check, label="per-sample gradient estimator")


def get_per_sample(name: str) -> PerSampleGradients:
    """The estimator called ``name`` (an unknown name raises naming the known ones)."""
    return PER_SAMPLE_GRADIENTS.get(name)


@final
@PER_SAMPLE_GRADIENTS.register("loop")
class LoopGradients(PerSampleGradients):
    """One backward pass per sample (the reference)."""

    def __call__(self, target: FisherTarget, x: torch.Tensor, noise: Noise,
                 labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        live = target.named_params()
        out: Dict[str, list] = {k: [] for k in live}
        for n in range(x.shape[0]):
            nz = None if noise is None else {k: v[n : n + 1] for k, v in noise.items()}
            loss = nll_terms(target.logits(x[n : n + 1], nz), labels[n : n + 1]).sum()
            grads = torch.autograd.grad(loss, list(live.values()), allow_unused=True)
            for (k, p), g in zip(live.items(), grads):
                out[k].append(torch.zeros_like(p) if g is None else g)
        return {k: torch.stack(v) for k, v in out.items()}


@final
@PER_SAMPLE_GRADIENTS.register("vmap")
class VmapGradients(PerSampleGradients):
    """``torch.func`` ``vmap(grad(...))`` over the batch (one batched pass)."""

    def __call__(self, target: FisherTarget, x: torch.Tensor, noise: Noise,
                 labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        model = target.model
        params = {k: v.detach() for k, v in target.named_params().items()}
        buffers = {k: v.detach() for k, v in model.named_buffers()}

        if noise is None:
            def loss_one(p, xi, yi):
                logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
                return nll_terms(logits, yi.unsqueeze(0)).sum()

            return vmap(grad(loss_one), in_dims=(None, 0, 0))(params, x, labels)

        def loss_one_noisy(p, xi, ni, yi):
            nz = {k: v.unsqueeze(0) for k, v in ni.items()}
            logits = functional_call(model, (p, buffers), (xi.unsqueeze(0), nz))
            return nll_terms(logits, yi.unsqueeze(0)).sum()

        return vmap(grad(loss_one_noisy), in_dims=(None, 0, 0, 0))(params, x, noise, labels)
