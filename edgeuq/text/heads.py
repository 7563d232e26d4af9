"""The text classifier's stochastic heads: a capability each scheme declares (the text plug-in point).

A scheme with a head on :class:`~edgeuq.text.classifier.TextClassifier` declares it in its own
module as ``text_head = TextHead(...)`` (:class:`edgeuq.schemes.base.TextHead`): which layers of
the head sample at inference, and the capabilities the callers need instead of comparing scheme
names:

``sites``
    the head attributes whose noise is a graph input (the others act only in training);
``post_hoc_posterior``
    the stochastic layer is a posterior fitted after training (the last layer ``fc2``, a
    Laplace fit); the text teacher fits it once, and a distilled text student of that scheme
    has its own posterior fitted after distillation.

So adding a scheme with a text head touches only its own file (a third-party scheme through the
``edgeuq.scheme`` entry point group); this module only reads the scheme registry.
"""
from __future__ import annotations

from typing import Tuple

from ..schemes.base import TextHead
from ..schemes.registry import SCHEMES

__all__ = ["TextHead", "text_head", "text_scheme_names", "POSTERIOR_METRIC"]

#: the metrics key under which a fitted last-layer posterior is recorded (teacher artifact, student checkpoint)
POSTERIOR_METRIC = "laplace"


def text_head(scheme: str) -> TextHead:
    """The text head ``scheme`` declares (a ValueError names the schemes that have one)."""
    found = SCHEMES.get(scheme, None)
    head = None if found is None else found.text_head
    if head is None:
        raise ValueError(f"text scheme must be one of {list(text_scheme_names())}, got {scheme!r}")
    return head


def text_scheme_names() -> Tuple[str, ...]:
    """The registered schemes that declare a text head, in registry order."""
    return tuple(name for name, scheme in SCHEMES.items() if scheme.text_head is not None)
