"""The one atomic write: a temporary file next to the target, then a rename over it.

Readers see the old file or the new one, never a torn one. ``durable=True`` also fsyncs the
file before the rename and the folder after it (for state that must survive a power cut).
Both the runtime and the host write through here. (The OTA slot store keeps its own writer,
because it injects crash points between each step for its power-cut tests.)
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Union

__all__ = ["atomic_write"]

PathLike = Union[str, "os.PathLike[str]"]


def atomic_write(path: PathLike, data: Union[bytes, str], *, durable: bool = False, mkdir: bool = True) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path. A failure
    part-way leaves the old file as it was and removes the temporary one."""
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable and hasattr(os, "O_DIRECTORY"):
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path
