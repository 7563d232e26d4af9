"""The strict-JSON toolkit: validators shared by the manifest and every manifest section
(calibration, placement, canaries, ...). Every failure is a ManifestError whose message starts
with the dotted name of the offending field; nothing is coerced (a bool is not a number)."""
from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Tuple

from .errors import ManifestError

_SHA256 = re.compile(r"^[0-9a-fA-F]{64}$")
_SHA256_LOWER = re.compile(r"^[0-9a-f]{64}$")
_DRIVE = re.compile(r"^[A-Za-z]:")


def fail(field: str, problem: str) -> ManifestError:
    return ManifestError(f"{field}: {problem}")


@contextlib.contextmanager
def prefixed(prefix: str) -> Iterator[None]:
    """Re-raise a ManifestError from a nested object with ``prefix.`` prepended."""
    try:
        yield
    except ManifestError as exc:
        raise ManifestError(f"{prefix}.{exc}") from None


@contextlib.contextmanager
def translated(make: Callable[[str], Exception]) -> Iterator[None]:
    """Re-raise a ManifestError from these checks as ``make(message)``: for validators whose
    callers expect another error type (an OTA refusal, a backend error), same message."""
    try:
        yield
    except ManifestError as exc:
        raise make(str(exc)) from None


def valid(check: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """True when ``check(*args, **kwargs)`` passes: the predicate form of any check here."""
    try:
        check(*args, **kwargs)
    except ManifestError:
        return False
    return True


def text(field: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(field, f"must be a non-empty string, got {_show(value)}")
    if len(value) > MAX_TEXT:
        raise fail(field, f"must be at most {MAX_TEXT} characters, got {len(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(field, f"must be valid Unicode text (no lone surrogates), got {_show(value)}") from None
    return value


#: Longest string any manifest field may hold.
MAX_TEXT = 4096
#: Largest integer any manifest field may hold (bigger ones are refused, never truncated).
MAX_INT = 2 ** 31 - 1


def _show(value: Any, limit: int = 80) -> str:
    """repr() cut to ``limit`` characters (a refused value may be huge)."""
    try:
        text_ = repr(value) if not isinstance(value, int) or abs(value) < 10 ** 60 else f"<integer of {len(str(abs(value)))} digits>"
    except (ValueError, RecursionError):
        text_ = f"<{type(value).__name__}>"
    return text_ if len(text_) <= limit else text_[:limit] + "..."


def positive_int(field: str, value: Any, maximum: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(field, f"must be an integer >= 1, got {_show(value)}")
    if value > maximum:
        raise fail(field, f"must be an integer <= {maximum}, got {_show(value)}")
    return int(value)


def positive_float(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(field, f"must be a finite number > 0, got {_show(value)}")
    try:
        ok = math.isfinite(value) and value > 0 and math.isfinite(float(value))
    except OverflowError:
        ok = False
    if not ok:
        raise fail(field, f"must be a finite number > 0, got {_show(value)}")
    return float(value)


def names(field: str, value: Any, min_len: int = 0) -> Tuple[str, ...]:
    """A tuple of unique non-empty strings (a bare string is refused)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise fail(field, f"must be a list of strings, got {_show(value)}")
    out = tuple(text(f"{field}[{i}]", v) for i, v in enumerate(value))
    if len(out) < min_len:
        raise fail(field, f"needs at least {min_len} entries, got {len(out)}: {list(out)}")
    seen: set = set()
    dupes = sorted({v for v in out if v in seen or seen.add(v)})
    if dupes:
        raise fail(field, f"names must be unique, duplicated: {dupes}")
    return out


def relpath(field: str, value: Any) -> str:
    """A portable bundle-relative path: forward slashes, no '..', not absolute."""
    path = text(field, value)
    if len(path) > 1024 or any(ord(ch) < 32 or ord(ch) == 127 for ch in path):
        raise fail(field, f"must be a path of at most 1024 printable characters, got {_show(path)}")
    if "\\" in path:
        raise fail(field, f"must use forward slashes, got {path!r}")
    if path.startswith("/") or _DRIVE.match(path):
        raise fail(field, f"must be relative to the bundle directory, got absolute path {path!r}")
    parts = path.split("/")
    if ".." in parts:
        raise fail(field, f"must not contain '..', got {path!r}")
    if any(p in ("", ".") for p in parts):
        raise fail(field, f"must be a normalised relative path, got {path!r}")
    return path


def sha256_hex(field: str, value: Any, lowercase_only: bool = False) -> str:
    """A sha256 hex digest, returned lowercased; ``lowercase_only`` refuses upper-case digits.
    (fullmatch: ``$`` alone would let a trailing newline through.)"""
    if not isinstance(value, str) or not (_SHA256_LOWER if lowercase_only else _SHA256).fullmatch(value):
        case = "lowercase " if lowercase_only else ""
        raise fail(field, f"must be a {case}sha256 digest of 64 hex characters, got {_show(value)}")
    return value.lower()


def obj(field: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise fail(field, f"must be a JSON object, got {type(value).__name__}")
    return value


def key(field: str, mapping: Any, name: str) -> Any:
    """``mapping[name]`` or a ManifestError naming ``field.name`` as missing."""
    obj(field, mapping)
    if name not in mapping:
        raise fail(f"{field}.{name}" if field else name, "missing")
    return mapping[name]


# -- strict JSON: objects with exactly known keys, typed numbers (one toolkit for every manifest section)

def obj_keys(where: str, v: Any, allowed: set, required: set = frozenset()) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise fail(where, f"must be an object, got {type(v).__name__}")
    extra = sorted(set(v) - allowed)
    if extra:
        raise fail(where, f"unknown keys {extra}; allowed: {sorted(allowed)}")
    missing = sorted(set(required) - set(v))
    if missing:
        raise fail(where, f"missing keys {missing}")
    return v


def number(where: str, v: Any, lo: float = -math.inf, hi: float = math.inf, open_lo: bool = False,
         open_hi: bool = False, nullable: bool = False) -> Optional[float]:
    if v is None and nullable:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(where, f"must be a number{' or null' if nullable else ''}, got {v!r}")
    f = float(v)
    if not math.isfinite(f):
        raise fail(where, f"must be finite, got {v!r}")
    if f < lo or f > hi or (open_lo and f == lo) or (open_hi and f == hi):
        lb, hb = "(" if open_lo else "[", ")" if open_hi else "]"
        raise fail(where, f"must lie in {lb}{lo:g}, {hi:g}{hb}, got {v!r}")
    return f


def integer(where: str, v: Any, lo: Optional[int] = 0, hi: Optional[int] = None) -> int:
    """An int (a bool is not one) in [lo, hi]; ``lo=None`` / ``hi=None``: unbounded on that side."""
    if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
        bounds = " in [{}, {}]".format(lo, hi) if lo is not None and hi is not None else \
            f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else ""
        raise fail(where, f"must be an integer{bounds}, got {_show(v)}")
    return int(v)


def boolean(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise fail(where, f"must be true or false, got {v!r}")
    return v
