"""The registry of stochastic schemes (the plug-in point for a new scheme).

A scheme is a subclass of :class:`edgeuq.schemes.base.Scheme` in its own module of this
package, registered with ``@register_scheme("name")``. The package's ``__init__`` imports
every module of the package (:func:`edgeuq.registry.scan_package`), so a new built-in scheme
is one new file; a scheme in another distribution declares an ``edgeuq.scheme`` entry point.
The registry object itself is :data:`edgeuq.models.scheme_slot.SCHEMES` (below the model
code, which looks schemes up there without importing this package).

This is the only place that names schemes: the rest of edgeuq asks
``get_scheme(cfg.scheme)`` and calls its hooks (a test scans for comparisons).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Tuple, TypeVar

from ..models.scheme_slot import SCHEMES, check_scheme_name

if TYPE_CHECKING:  # pragma: no cover
    from .base import Scheme

__all__ = ["register_scheme", "get_scheme", "registered_schemes", "scheme_names", "SCHEMES"]

S = TypeVar("S", bound=type)


def register_scheme(name: str) -> Callable[[S], S]:
    """Class decorator: register one instance of the scheme class under ``name``."""
    check_scheme_name(name)
    return SCHEMES.register(name)


def get_scheme(name: str) -> "Scheme":
    """The registered scheme called ``name`` (a clear error names the known ones)."""
    try:
        return SCHEMES.get(name)
    except LookupError as exc:
        raise ValueError(f"unknown stochastic scheme {name!r}; available: {sorted(SCHEMES)}") from exc


def registered_schemes() -> Tuple["Scheme", ...]:
    return SCHEMES.values_()


def scheme_names() -> Tuple[str, ...]:
    return SCHEMES.names()
