"""The one atomic write (edgeuq_runtime.atomic): new content or the old file, never a torn one,
and no temporary file left behind on failure."""
import os

import pytest

from edgeuq_runtime import atomic
from edgeuq_runtime.atomic import atomic_write


@pytest.mark.parametrize("durable", [False, True])
def test_writes_text_and_bytes_and_replaces(tmp_path, durable):
    p = tmp_path / "sub" / "f.json"
    atomic_write(p, "héllo\n", durable=durable)
    assert p.read_bytes() == "héllo\n".encode("utf-8")
    atomic_write(p, b"\x00\x01", durable=durable)
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(p.parent)) == ["f.json"]


def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    p = tmp_path / "f.txt"
    p.write_text("old")

    def broken(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(p, "new")
    assert p.read_text() == "old" and sorted(os.listdir(tmp_path)) == ["f.txt"]
