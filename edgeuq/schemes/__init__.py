"""Stochastic schemes as plug-ins: one module per scheme, registered by name.

``get_scheme(name)`` returns the scheme; each one (a :class:`~edgeuq.schemes.base.Scheme`)
owns its layers, its options dataclass (``ModelConfig.scheme_options``), its
validation, its model factory, its training loss and fitting hook, and its noise
specs. To add a scheme, copy ``edgeuq/schemes/hsa.py`` (or the smallest,
``mc_dropout.py``), rename it, and register it with ``@register_scheme("name")``:
this package imports every module in it (no list to edit).
"""
from ..registry import scan_package
from .registry import SCHEMES, get_scheme, register_scheme, registered_schemes, scheme_names

#: the built-in scheme modules, found by scanning this package (each registers itself)
BUILTIN_MODULES = scan_package(__name__, __path__, skip=("base", "registry"))

__all__ = ["SCHEMES", "get_scheme", "register_scheme", "registered_schemes", "scheme_names", "BUILTIN_MODULES"]
