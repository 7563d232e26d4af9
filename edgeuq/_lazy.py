"""Lazy package exports (PEP 562), for package facades that must not import their children
eagerly (``edgeuq.models``, ``edgeuq.training``): a scheme importing ``edgeuq.models.layers``
then does not pull in ``edgeuq.models.config``, which sits above the schemes."""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List, Mapping, Tuple

__all__ = ["lazy_exports"]


def lazy_exports(package: str, api: Mapping[str, str], namespace: Dict[str, Any]
                 ) -> Tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``api`` maps a public name to the submodule
    (relative to ``package``) defining it; a resolved name is cached in ``namespace``."""

    def __getattr__(name: str) -> Any:
        try:
            module = api[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    def __dir__() -> List[str]:
        return sorted(set(namespace) | set(api))

    return __getattr__, __dir__
