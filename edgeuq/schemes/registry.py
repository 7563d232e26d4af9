"""The registry of stochastic schemes (the plug-in point for a new scheme).

A scheme is a subclass of :class:`edgeuq.schemes.base.Scheme` in its own module,
registered with ``@register_scheme("name")``. The built-in schemes are imported
on first use (so this module imports nothing of edgeuq and sits below the model
code); a scheme outside this package registers itself when its module is imported.

This is the only place that names schemes: the rest of edgeuq asks
``get_scheme(cfg.scheme)`` and calls its hooks (a test scans for comparisons).
"""
from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Dict, Iterator, Tuple, TypeVar, final

if TYPE_CHECKING:  # pragma: no cover
    from .base import Scheme

__all__ = ["register_scheme", "get_scheme", "registered_schemes", "scheme_names", "SCHEMES"]

#: Modules of the built-in schemes, imported on first use.
_BUILTIN_MODULES = ("mc_dropout", "variational", "hsa", "ensemble", "laplace", "ddu", "sngp")
_REGISTRY: Dict[str, "Scheme"] = {}
_loaded = False

S = TypeVar("S", bound=type)


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(f"{__package__}.{module}")


def register_scheme(name: str) -> Callable[[S], S]:
    """Class decorator: register one instance of the scheme class under ``name``."""
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"scheme names are lower-case identifiers, got {name!r}")

    def decorate(cls: S) -> S:
        if name in _REGISTRY and type(_REGISTRY[name]) is not cls:
            raise ValueError(f"scheme {name!r} is already registered by {type(_REGISTRY[name]).__name__}")
        cls.name = name
        _REGISTRY[name] = cls()
        return cls

    return decorate


def get_scheme(name: str) -> "Scheme":
    """The registered scheme called ``name`` (a clear error names the known ones)."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown stochastic scheme {name!r}; available: {sorted(_REGISTRY)}") from None


def registered_schemes() -> Tuple["Scheme", ...]:
    _load_builtins()
    return tuple(_REGISTRY.values())


def scheme_names() -> Tuple[str, ...]:
    _load_builtins()
    return tuple(_REGISTRY)


@final
class _SchemesView(Mapping):
    """Read-only name -> scheme view of the registry (loads the built-ins on first use)."""

    def __getitem__(self, name: str) -> "Scheme":
        _load_builtins()
        return _REGISTRY[name]

    def __iter__(self) -> Iterator[str]:
        _load_builtins()
        return iter(tuple(_REGISTRY))

    def __len__(self) -> int:
        _load_builtins()
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return f"SCHEMES({list(self)})"


#: name -> registered scheme (a live, read-only view).
SCHEMES: Mapping = _SchemesView()
