"""The text classifier's stochastic heads, looked up by scheme (the text plug-in point).

A :class:`TextHead` says which layers of :class:`~edgeuq.text.classifier.TextClassifier`'s head
sample at inference for a scheme, and declares the capabilities the callers need instead of
comparing scheme names:

``sites``
    the head attributes whose noise is a graph input (the others act only in training);
``post_hoc_posterior``
    the stochastic layer is a posterior fitted after training (the last layer ``fc2``, a
    Laplace fit); the text teacher fits it once, and a distilled text student of that scheme
    has its own posterior fitted after distillation.

The keys are names of the scheme registry (:data:`edgeuq.schemes.SCHEMES`; a head for an
unknown scheme is refused), and the registry is a :class:`edgeuq.registry.Registry`, so a
third-party scheme adds its text head through the ``edgeuq.text_head`` entry point group.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Tuple

from ..registry import Registry
from ..schemes.registry import get_scheme

__all__ = ["TextHead", "TEXT_HEADS", "text_head", "text_scheme_names", "POSTERIOR_METRIC"]

#: the metrics key under which a fitted last-layer posterior is recorded (teacher artifact, student checkpoint)
POSTERIOR_METRIC = "laplace"

#: the layers of the text head that can carry noise
HEAD_SITES = ("drop_in", "drop_hidden", "fc2")


@dataclass(frozen=True)
class TextHead:
    sites: Tuple[str, ...]
    post_hoc_posterior: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "sites", tuple(self.sites))
        bad = [s for s in self.sites if s not in HEAD_SITES]
        if bad or not self.sites:
            raise ValueError(f"TextHead.sites must be a non-empty subset of {list(HEAD_SITES)}, got {list(self.sites)}")
        if self.post_hoc_posterior and "fc2" not in self.sites:
            raise ValueError("TextHead.post_hoc_posterior needs the last layer 'fc2' among its sites")


def _check(name: str, value: Any) -> None:
    get_scheme(name)  # a text head belongs to a registered scheme (raises naming the known ones)
    if not isinstance(value, TextHead):
        raise TypeError(f"text head {name!r} must be a TextHead, got {type(value).__name__}")


#: scheme name -> its text head
TEXT_HEADS: Registry[TextHead] = Registry("text_head", check=_check, name_attr=None, label="text head")
TEXT_HEADS.add("mc_dropout", TextHead(sites=("drop_in", "drop_hidden")))
TEXT_HEADS.add("laplace", TextHead(sites=("fc2",), post_hoc_posterior=True))


def text_head(scheme: str) -> TextHead:
    """The text head of ``scheme`` (a ValueError names the schemes that have one)."""
    try:
        return TEXT_HEADS.get(scheme)
    except LookupError as exc:
        raise ValueError(f"text scheme must be one of {list(TEXT_HEADS.names())}, got {scheme!r}") from exc


def text_scheme_names() -> Tuple[str, ...]:
    return TEXT_HEADS.names()
