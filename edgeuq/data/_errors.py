"""Errors raised by :mod:`edgeuq.data`. Every message names the offending thing."""
from __future__ import annotations

__all__ = ["DataError", "DataIntegrityError"]


class DataError(ValueError):
    """A data file, record or dataset is malformed, inconsistent or unsupported."""


class DataIntegrityError(DataError):
    """A data file's sha256 does not match the one recorded in its manifest."""
