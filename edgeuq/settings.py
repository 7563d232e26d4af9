"""Shared helper for settings dataclasses built from recipe tables."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping, Type, TypeVar

__all__ = ["settings_from_dict"]

T = TypeVar("T")


def settings_from_dict(cls: Type[T], d: Mapping[str, Any], what: str, **overrides: Any) -> T:
    """Build ``cls`` from a recipe table, refusing unknown keys; ``None`` overrides are ignored."""
    known = {f.name for f in fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} settings {sorted(unknown)}; known: {sorted(known)}")
    return cls(**{**d, **{k: v for k, v in overrides.items() if v is not None}})
