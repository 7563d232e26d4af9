"""A bundle as one file: a deterministic, uncompressed tar (byte-identical on host and device).

Uncompressed so that a head-only retrain changes only the head's bytes and a bsdiff
delta stays small. :func:`unpack_bundle` never touches the disk: members are checked by the
pure core (plain files at safe relative paths only) and returned as bytes.
:class:`BundleArchive` is the bounded-memory form the updater uses: an archive file on disk
whose member headers are read and checked (the same core check) before any byte is extracted,
then each member is read in chunks of at most ``READ_CHUNK`` bytes.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import BinaryIO, Dict, Iterator, List, Tuple

from .core import check_archive_members
from .errors import UpdateRefused

__all__ = ["pack_bundle", "pack_bundle_to", "bundle_archive_sha256", "unpack_bundle", "MAX_BUNDLE_BYTES",
           "BundleArchive", "READ_CHUNK"]

MAX_BUNDLE_BYTES = 1 << 30
READ_CHUNK = 1 << 20
MANIFEST = "manifest.json"


def pack_bundle(bundle_dir: Path) -> bytes:
    """manifest.json plus every file it lists, sorted, with zeroed owner/time/mode metadata."""
    buf = io.BytesIO()
    pack_bundle_to(bundle_dir, buf)
    return buf.getvalue()


class _Sha256Sink:
    """A write-only file object that only hashes (and counts) what is written."""

    def __init__(self) -> None:
        import hashlib

        self.digest, self.size = hashlib.sha256(), 0

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        self.size += len(data)
        return len(data)

    def tell(self) -> int:
        return self.size


def pack_bundle_to(bundle_dir: Path, fileobj: BinaryIO) -> None:
    """:func:`pack_bundle` written into ``fileobj``, each file streamed (bounded memory); the
    bytes are exactly :func:`pack_bundle`'s (it is this function on a BytesIO)."""
    bundle_dir = Path(bundle_dir)
    files = json.loads((bundle_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in [MANIFEST] + sorted(files):
            path = bundle_dir / name
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = path.stat().st_size, 0, 0o644, 0, 0
            info.uname = info.gname = ""
            with open(path, "rb") as fh:
                tar.addfile(info, fh)


def bundle_archive_sha256(bundle_dir: Path) -> Tuple[str, int]:
    """(sha256, length) of :func:`pack_bundle`'s archive, computed without holding it in memory."""
    sink = _Sha256Sink()
    pack_bundle_to(bundle_dir, sink)  # type: ignore[arg-type]
    return sink.digest.hexdigest(), sink.size


def _kind(m: tarfile.TarInfo) -> str:
    if m.issparse():  # a sparse member expands far beyond its bytes in the archive
        return "sparse"
    if m.pax_headers:  # pax headers can redefine name and size; the packer never writes them
        return "pax"
    return "file" if m.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else "other"


def unpack_bundle(data: bytes, max_total: int = MAX_BUNDLE_BYTES) -> Dict[str, bytes]:
    """Members are listed and checked (kinds, paths, duplicates, declared sizes) before one
    byte is extracted: their sizes together may not exceed the archive itself (it is
    uncompressed) nor ``max_total``."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            listing: List[Tuple[str, str, int]] = [(m.name, _kind(m), m.size) for m in members]
            names = check_archive_members(listing, min(max_total, len(data)))
            out = {}
            for m, name in zip(members, names):
                fh = tar.extractfile(m)
                out[name] = fh.read() if fh is not None else b""
                if len(out[name]) != m.size:
                    raise UpdateRefused("archive", f"archive entry {name!r} is truncated")
            return out
    except tarfile.TarError as exc:
        raise UpdateRefused("archive", f"not a valid bundle archive: {exc}") from None


class BundleArchive:
    """A bundle archive in an open binary file, read member by member with bounded memory.

    Opening lists every member header (no data is read: tarfile seeks over it) and applies
    :func:`check_archive_members` -- plain, non-sparse, non-pax files at safe relative paths,
    no duplicates, no file that is another's directory, declared sizes together within
    ``max_total`` (the signed archive length) and within the file itself -- before one byte is
    extracted. :meth:`chunks` then yields a member's bytes in pieces of ``READ_CHUNK``.
    """

    def __init__(self, fh: BinaryIO, max_total: int = MAX_BUNDLE_BYTES) -> None:
        self.fh = fh
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(0)
        try:
            tar = tarfile.open(fileobj=fh, mode="r:")
            members = tar.getmembers()
        except tarfile.TarError as exc:
            raise UpdateRefused("archive", f"not a valid bundle archive: {exc}") from None
        listing: List[Tuple[str, str, int]] = [(m.name, _kind(m), m.size) for m in members]
        names = check_archive_members(listing, min(max_total, size))
        self.names: List[str] = names
        self.sizes: Dict[str, int] = {n: m.size for n, m in zip(names, members)}
        self._offsets: Dict[str, int] = {n: m.offset_data for n, m in zip(names, members)}

    def chunks(self, name: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        """The member's bytes, ``chunk`` at a time (refused when the archive ends early)."""
        left = self.sizes[name]
        self.fh.seek(self._offsets[name])
        while left > 0:
            block = self.fh.read(min(chunk, left))
            if not block:
                raise UpdateRefused("archive", f"archive entry {name!r} is truncated")
            left -= len(block)
            yield block

    def read_small(self, name: str, limit: int) -> bytes:
        """A member read whole, refused (before reading) when it declares more than ``limit`` bytes."""
        if self.sizes[name] > limit:
            raise UpdateRefused("archive", f"archive entry {name!r} declares {self.sizes[name]} bytes, more than "
                                f"the {limit} allowed for it")
        return b"".join(self.chunks(name))
