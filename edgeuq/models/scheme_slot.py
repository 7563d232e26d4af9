"""The registry the scheme plug-ins fill (``edgeuq.schemes`` registers into it).

The model builder (:mod:`edgeuq.models.transformer`) looks ``cfg.scheme`` up here, so the
network code sits *below* the schemes and never imports them: a ``ModelConfig`` exists only
after :mod:`edgeuq.models.config` (which sits above the schemes and imports
:mod:`edgeuq.schemes`, whose package scan registers the built-ins) was imported, so every
name a config carries is registered by the time a layer is built. Third-party schemes come
from the ``edgeuq.scheme`` entry points (:class:`edgeuq.registry.Registry`).
"""
from __future__ import annotations

from typing import Any, final

from ..registry import Registry, RegistryError

__all__ = ["SCHEMES", "check_scheme_name"]


def check_scheme_name(name: str, value: Any = None) -> None:
    if not name or not name.replace("_", "").isalnum() or name != name.lower():
        raise ValueError(f"scheme names are lower-case identifiers, got {name!r}")


@final
class UnknownScheme(RegistryError):
    """An unknown stochastic scheme name."""


#: name -> registered scheme instance (one per Scheme subclass).
SCHEMES: Registry[Any] = Registry("scheme", instantiate=True, check=check_scheme_name, error=UnknownScheme)
