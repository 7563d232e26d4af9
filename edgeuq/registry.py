"""One registry mechanism for every plug-in point (core layer: imports nothing of edgeuq).

A :class:`Registry` maps a name to a plug-in (a scheme instance, a lowerer, a data source ...).
It is filled in three ways, and only these:

1. **decorator**: ``@REG.register("name")`` on a class (one instance is registered) or any object
   (``REG.add("name", obj)`` for a value that is not decorated);
2. **package scan** of the built-ins: the plug-in package's own ``__init__`` calls
   ``scan_package(__name__, __path__)``, which imports every module *inside that package*. The
   package therefore depends on its plug-ins, never the other way round, and no module names
   another package to import dynamically (an import-linter contract sees every edge);
   A registry whose built-ins are heavy (the lowerers) instead names its own ``package``: a
   missing name ``n`` imports ``<package>.n`` if that module exists, and nothing else (the
   registry object lives in that same package, so this is still an edge inside one package);
3. **entry points** for third-party plug-ins: the group ``edgeuq.<kind>`` (e.g.
   ``[project.entry-points."edgeuq.scheme"] toy = "toy_pkg.toy"``); each entry point's module is
   imported (its decorator registers) the first time a name is missing or the names are listed.

``get`` raises a :class:`LookupError` (also a ``ValueError``) that names the kind and every
known name.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Callable, Dict, Generic, Iterable, Iterator, Optional, Tuple, TypeVar

__all__ = ["Registry", "RegistryError", "scan_package", "ENTRY_POINT_PREFIX"]

T = TypeVar("T")
C = TypeVar("C")

#: entry-point groups are ``edgeuq.<kind>``
ENTRY_POINT_PREFIX = "edgeuq."


class RegistryError(LookupError, ValueError):
    """An unknown or duplicate name in a registry (the message names the known ones)."""


def scan_package(package: str, path: Iterable[str], skip: Tuple[str, ...] = ()) -> Tuple[str, ...]:
    """Import every module of ``package`` (``path`` = its ``__path__``) except private ones
    (``_x``) and ``skip``; return their names. Called by the package itself, so the import goes
    downward from the package to its own children."""
    names = []
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda i: i.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        importlib.import_module(f"{package}.{info.name}")
        names.append(info.name)
    return tuple(names)


class Registry(Mapping, Generic[T]):
    """name -> plug-in of one ``kind`` (read-only Mapping view; insertion order is kept).

    ``instantiate``: the decorator registers ``cls()`` instead of the class itself.
    ``check``: called with (name, value) before registering; raises on a bad plug-in.
    ``error``: the exception class raised for an unknown name (a subclass of LookupError).
    """

    def __init__(self, kind: str, *, instantiate: bool = False,
                 check: Optional[Callable[[str, Any], None]] = None,
                 error: type = RegistryError, name_attr: Optional[str] = "name",
                 package: Optional[str] = None, label: Optional[str] = None) -> None:
        self.kind = kind
        self.label = label or kind
        self.package = package
        self.group = ENTRY_POINT_PREFIX + kind
        self._items: Dict[str, T] = {}
        self._instantiate = instantiate
        self._check = check
        self._error = error
        self._name_attr = name_attr
        self._entry_points_loaded = False

    # -- filling --------------------------------------------------------------------
    def add(self, name: str, value: T, *, replace: bool = False) -> T:
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.kind} names are non-empty strings, got {name!r}")
        if self._check is not None:
            self._check(name, value)
        old = self._items.get(name)
        if old is not None and not replace and old is not value:
            raise RegistryError(f"{self.label} {name!r} is already registered ({_describe(old)})")
        self._items[name] = value
        return value

    def register(self, name: str) -> Callable[[C], C]:
        """Decorator: register the decorated class (or ``cls()`` when ``instantiate``) under
        ``name``; the class gets ``name`` as its ``name`` attribute."""

        def decorate(obj: C) -> C:
            if self._name_attr and isinstance(obj, type):
                setattr(obj, self._name_attr, name)
            value = obj() if self._instantiate and isinstance(obj, type) else obj
            old = self._items.get(name)
            if old is not None and (type(old) if self._instantiate else old) is not obj:
                raise RegistryError(f"{self.label} {name!r} is already registered by {_describe(old)}")
            self.add(name, value, replace=True)
            return obj

        return decorate

    def remove(self, name: str) -> None:
        """Unregister ``name`` (tests that register a toy plug-in clean up with this)."""
        self._items.pop(name, None)

    def load_entry_points(self) -> Tuple[str, ...]:
        """Import the modules of the ``edgeuq.<kind>`` entry points (once); their decorators
        register. Returns the entry-point names seen."""
        if self._entry_points_loaded:
            return ()
        self._entry_points_loaded = True
        seen = []
        for ep in entry_points(group=self.group):
            seen.append(ep.name)
            obj = ep.load()
            if ep.name not in self._items and not isinstance(obj, type(importlib)):
                self.add(ep.name, obj() if self._instantiate and isinstance(obj, type) else obj)
        return tuple(seen)

    def _import_from_package(self, name: str) -> None:
        """``<package>.<name>`` imported when the registry has a ``package`` and that module
        exists (an ImportError inside it propagates: the plug-in is there but broken)."""
        if not self.package or not isinstance(name, str) or not name.isidentifier():
            return
        module = f"{self.package}.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise

    # -- lookup ---------------------------------------------------------------------
    def get(self, name: str, default: Any = ...) -> T:  # type: ignore[override]
        """The plug-in ``name``; an unknown name raises naming every known one."""
        try:
            return self._items[name]
        except (KeyError, TypeError):
            pass
        self._import_from_package(name)
        self.load_entry_points()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            if default is not ...:
                return default
            raise self._error(f"unknown {self.label} {name!r}; known: {sorted(self._items)}") from None

    def names(self) -> Tuple[str, ...]:
        self.load_entry_points()
        return tuple(self._items)

    def values_(self) -> Tuple[T, ...]:
        self.load_entry_points()
        return tuple(self._items.values())

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            self.load_entry_points()
            return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __contains__(self, name: object) -> bool:
        if name in self._items:
            return True
        self.load_entry_points()
        return name in self._items

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._items)})"


def _describe(value: Any) -> str:
    return value.__name__ if isinstance(value, type) else type(value).__name__
