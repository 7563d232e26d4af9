"""Errors raised by the runtime. Every message names the offending thing."""
from __future__ import annotations

__all__ = ["RuntimeUQError", "BundleError", "ManifestError", "IntegrityError", "InputError", "BackendError"]


class RuntimeUQError(Exception):
    """Base class of every error the runtime raises on purpose."""


class BundleError(RuntimeUQError):
    """The bundle directory or one of its files is missing or unreadable."""


class ManifestError(BundleError):
    """manifest.json is malformed, of an unknown version, or inconsistent."""


class IntegrityError(BundleError):
    """A bundle file's sha256 does not match the manifest."""


class InputError(RuntimeUQError, ValueError):
    """The caller's input has the wrong shape, dtype, or non-finite values."""


class BackendError(RuntimeUQError):
    """The execution backend is missing or failed to load or run a graph."""
