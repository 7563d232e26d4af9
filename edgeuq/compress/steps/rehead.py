"""``rehead``: the same network under another scheme's head (e.g. a Laplace student as an MC-dropout
one, for a board whose head lowering takes only dropout masks).

The capability read is the scheme's own :class:`~edgeuq.schemes.base.TextHead` (``Scheme.text_head``):
a scheme without one has no head of this classifier shape and is refused by name of the capability,
never by comparing scheme names. The new config is the input's with ``scheme`` (and the scheme's
default options) and ``stochastic_head = true``; the stochastic blocks stay as they are (a text head
lives in the head only; the scheme's ``problems`` must be empty, e.g. a last-layer scheme refuses them). Every **parameter** of the input moves over unchanged
(the network is the same: an MC-dropout head samples with the dropout rate the head was trained with,
``head_dropout``); only buffers of stochastic layers may differ (the source's fitted posterior factors
are dropped; a target head whose posterior is fitted after training, ``TextHead.post_hoc_posterior``,
starts unfitted, as its MAP linear, until a ``posterior`` step fits it). Anything else missing or left
over is an error naming the keys.

``info``: the schemes before and after, the noise kinds before and after, the dropped and the unfitted
buffers, and (when ``data.x`` has rows) the largest difference of the two models' deterministic-pass
logits on them (the same network: ~1e-7).
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import List

import numpy as np
import torch
from torch import nn

from ...models.layers import is_stochastic_layer
from ...schemes.registry import SCHEMES, get_scheme
from . import COMPRESSION_STEPS, CompressionStep, StepData, StepResult

__all__ = ["Rehead"]


def _stochastic_buffers(model: nn.Module) -> set:
    """State-dict keys of the buffers (not parameters) of the model's stochastic layers."""
    out = set()
    for prefix, m in model.named_modules():
        if is_stochastic_layer(m):
            out.update(f"{prefix}.{name}" if prefix else name for name, _ in m.named_buffers())
    return out


@COMPRESSION_STEPS.register("rehead")
class Rehead(CompressionStep):
    @dataclass(frozen=True)
    class Options:
        scheme: str = ""        # a registered scheme that declares a text head (Scheme.text_head)

        def __post_init__(self) -> None:
            if not isinstance(self.scheme, str) or not self.scheme:
                raise ValueError(f"rehead option scheme must name a registered scheme, got {self.scheme!r}")

    def apply(self, model: nn.Module, data: StepData, options: "Rehead.Options") -> StepResult:
        from ...models import build_model

        target = get_scheme(options.scheme)  # a lookup error lists the registered schemes
        if target.text_head is None:
            with_head = [n for n, s in SCHEMES.items() if s.text_head is not None]
            raise ValueError(f"compression step 'rehead': scheme {options.scheme!r} declares no text head "
                             f"(Scheme.text_head); schemes with one: {with_head}")
        cfg = dataclasses.replace(model.cfg, scheme=options.scheme, scheme_options=None, stochastic_head=True)
        problems: List[str] = target.problems(cfg)
        if problems:
            raise ValueError(f"compression step 'rehead': the model under scheme {options.scheme!r}: {problems}")
        new = build_model(cfg).eval()
        params_old = {k for k, _ in model.named_parameters()}
        params_new = {k for k, _ in new.named_parameters()}
        if params_old != params_new:
            raise ValueError(f"compression step 'rehead': the parameters differ under scheme {options.scheme!r} "
                             f"(only in the input: {sorted(params_old - params_new)}; only in the new model: "
                             f"{sorted(params_new - params_old)}); the step moves a head over the same weights")
        state = {k: v for k, v in model.state_dict().items() if k in new.state_dict()}
        missing, unexpected = new.load_state_dict(state, strict=False)
        dropped = sorted(set(model.state_dict()) - set(new.state_dict()))
        bad = sorted((set(dropped) - _stochastic_buffers(model)) | (set(missing) - _stochastic_buffers(new)))
        if bad or unexpected:
            raise ValueError(f"compression step 'rehead': state keys that are not posterior buffers of a stochastic "
                             f"layer would be lost or left unset: {bad or sorted(unexpected)}")
        kinds = lambda m: sorted({s.kind for s in m.noise_specs()})  # noqa: E731
        info = {"scheme_before": model.cfg.scheme, "scheme_after": options.scheme,
                "noise_kinds_before": kinds(model), "noise_kinds_after": kinds(new),
                "dropped_buffers": dropped, "unfitted_buffers": sorted(missing),
                "post_hoc_posterior": bool(target.text_head.post_hoc_posterior)}
        x = np.asarray(data.x)
        if len(x):
            old = copy.deepcopy(model).eval()
            old.set_sampling(False)
            new.set_sampling(False)
            with torch.no_grad():
                xt = torch.from_numpy(x[:64])
                diff = float((old(xt) - new(xt)).abs().max())
            info["deterministic_max_diff"] = diff
        data.log(f"rehead: scheme {model.cfg.scheme!r} -> {options.scheme!r} over the same weights (noise "
                 f"{info['noise_kinds_before']} -> {info['noise_kinds_after']})")
        return StepResult(new, info)
