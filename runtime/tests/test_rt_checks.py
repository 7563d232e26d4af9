"""The strict-JSON toolkit's adapters: translated() keeps the message under another error type,
valid() is the predicate form, and the digest / integer checks refuse what they name."""
import pytest

from edgeuq_runtime import _checks as c
from edgeuq_runtime.errors import BackendError, ManifestError


def test_translated_reraises_with_the_same_message():
    with pytest.raises(BackendError) as ei:
        with c.translated(BackendError):
            c.integer("head.size", "3", lo=1)
    assert str(ei.value) == "head.size: must be an integer >= 1, got '3'"
    assert not isinstance(ei.value, ManifestError)


def test_translated_leaves_other_errors_alone():
    with pytest.raises(KeyError):
        with c.translated(BackendError):
            raise KeyError("x")


@pytest.mark.parametrize("value, lowercase_only, ok", [
    ("a" * 64, True, True), ("A" * 64, False, True), ("A" * 64, True, False),
    ("a" * 64 + "\n", False, False), ("a" * 63, False, False), ("g" * 64, False, False), (None, False, False),
])
def test_sha256_hex(value, lowercase_only, ok):
    assert c.valid(c.sha256_hex, "d", value, lowercase_only=lowercase_only) is ok


@pytest.mark.parametrize("value, lo, hi, ok", [
    (-5, None, None, True), (True, None, None, False), (1.0, None, None, False), (0, 1, None, False),
    (7, 1, 7, True), (8, 1, 7, False), (-1, 0, None, False),
])
def test_integer_bounds(value, lo, hi, ok):
    assert c.valid(c.integer, "n", value, lo=lo, hi=hi) is ok
