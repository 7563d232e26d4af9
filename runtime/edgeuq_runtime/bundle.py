"""Reading and writing bundle directories (``manifest.json`` plus the files it hashes)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

from . import _checks as c
from .atomic import atomic_write
from .errors import BundleError, IntegrityError, ManifestError
from .manifest import MAX_MANIFEST_BYTES, Manifest

__all__ = ["MANIFEST_FILE", "Bundle", "sha256_file", "sha256_bytes", "load_bundle", "write_bundle",
           "safe_bundle_path"]

MANIFEST_FILE = "manifest.json"
PathLike = Union[str, "os.PathLike[str]"]


def sha256_file(path: PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_bundle_path(root: PathLike, name: str) -> Path:
    """``root/name`` after checking that ``name`` is a safe relative path, that no component
    of it is a symbolic link and that it resolves inside ``root`` (raises BundleError)."""
    root = Path(root)
    try:
        rel = c.relpath("file", name)
    except ManifestError as exc:
        raise BundleError(f"bad bundle file name: {exc}") from None
    path = root
    for part in rel.split("/"):
        path = path / part
        if path.is_symlink():
            raise BundleError(f"bundle file {name!r}: {str(path)!r} is a symbolic link; bundles must hold "
                              "real files (a link could point anywhere)")
    try:
        resolved, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:
        raise BundleError(f"bundle file {name!r}: cannot resolve {str(path)!r}: {exc}") from None
    if base != resolved and base not in resolved.parents:
        raise BundleError(f"bundle file {name!r} resolves to {str(resolved)!r}, outside the bundle {str(base)!r}")
    return path


@dataclass(frozen=True)
class Bundle:
    """A bundle directory, its parsed manifest and its identity.

    ``digest`` is the sha256 of the exact ``manifest.json`` bytes read: since the manifest
    holds the sha256 of every other file, it identifies the whole bundle (a deployment
    pins it; ``python -m edgeuq_runtime info`` prints it) once those files are verified.
    None for a bundle loaded with ``verify=False`` (its files may differ from what the
    manifest names, so no identity is claimed) and for a Bundle built by hand.
    """

    root: Path
    manifest: Manifest
    digest: Optional[str] = None

    def path(self, name: str) -> Path:
        """Absolute path of the bundle-relative file ``name``: a safe relative path, no
        symbolic link on the way, inside the bundle directory."""
        return safe_bundle_path(self.root, name)

    def listed_path(self, name: str, purpose: str) -> Path:
        """As :meth:`path`, and ``name`` must be listed (hashed) in the manifest's ``files``:
        for every file an executor opens (``purpose`` names it in the error)."""
        path = self.path(name)
        if name not in self.manifest.files:
            raise BundleError(f"{purpose} {name!r} is not listed in {MANIFEST_FILE} files; every file the runtime "
                              f"opens must be listed with its sha256 (listed: {sorted(self.manifest.files)})")
        return path

    def amend(self, *, sections: Optional[Mapping[str, Any]] = None, files: Optional[Mapping[str, PathLike]] = None,
              drop: Iterable[str] = (), out: Optional[PathLike] = None, **fields: Any) -> "Bundle":
        """The one way to change a written bundle: its files less ``drop``, plus (or replaced by)
        ``files`` (bundle name -> source file); its manifest with ``sections`` merged in (a value
        of None removes that section) and the top-level ``fields`` replaced. Written through
        :func:`write_bundle` into ``out`` (default: in place), so every file is hashed again and
        the manifest is written atomically; returns the new bundle (its digest set)."""
        dropped = set(drop)
        if MANIFEST_FILE in dropped or MANIFEST_FILE in (files or {}):
            raise BundleError(f"{MANIFEST_FILE!r} is written from the manifest; it cannot be dropped or replaced")
        unknown = sorted(dropped - set(self.manifest.files))
        if unknown:
            raise BundleError(f"cannot drop {unknown}: not listed in the bundle (listed: {sorted(self.manifest.files)})")
        sources: Dict[str, PathLike] = {n: self.path(n) for n in self.manifest.files if n not in dropped}
        sources.update(files or {})
        merged = dict(self.manifest.sections)
        for name, value in (sections or {}).items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        manifest = dataclasses.replace(self.manifest, files={}, sections=merged, **fields)
        return write_bundle(self.root if out is None else out, manifest, sources, overwrite=True)


def load_bundle(root: PathLike, verify: bool = True) -> Bundle:
    """Parse ``root/manifest.json`` and check that every listed file exists.

    With ``verify`` (the default) every file's sha256 is also compared with the
    manifest; a mismatch raises :class:`IntegrityError`. Without it the files are not
    read, so the bundle's ``digest`` is None (unverified: never the identity the
    manifest claims).
    """
    try:
        root = Path(root)
        if not root.exists():
            raise BundleError(f"bundle directory {str(root)!r} does not exist")
        if not root.is_dir():
            raise BundleError(f"bundle path {str(root)!r} is not a directory")
    except (OSError, ValueError) as exc:  # e.g. a name with a NUL byte, a path too long
        raise BundleError(f"bad bundle path {str(root)[:200]!r}: {exc}") from None
    manifest_path = safe_bundle_path(root, MANIFEST_FILE)
    if not manifest_path.is_file():
        raise BundleError(f"no {MANIFEST_FILE} in bundle directory {str(root)!r}")
    try:
        with open(manifest_path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise BundleError(f"cannot read {manifest_path}: {exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{manifest_path}: manifest is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{manifest_path}: manifest is not UTF-8 text: {exc}") from None
    try:
        manifest = Manifest.loads(text)
    except ManifestError as exc:
        raise ManifestError(f"{manifest_path}: {exc}") from None
    bundle = Bundle(root=root, manifest=manifest, digest=sha256_bytes(raw) if verify else None)
    for name, expected in manifest.files.items():
        path = bundle.path(name)
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "is missing"
            raise BundleError(f"bundle file {name!r} listed in {MANIFEST_FILE} {what} in {str(root)!r}")
        if verify:
            actual = sha256_file(path)
            if actual != expected:
                raise IntegrityError(
                    f"bundle file {name!r} is corrupted or modified: sha256 expected {expected[:12]}..., "
                    f"actual {actual[:12]}..."
                )
    return bundle


def _write_manifest_atomically(root: Path, manifest: Manifest) -> str:
    """Write ``manifest.json`` (temp file + rename); returns the digest of the bytes written."""
    text = manifest.dumps()
    atomic_write(root / MANIFEST_FILE, text, durable=True, mkdir=False)
    return sha256_bytes(text.encode("utf-8"))


def write_bundle(root: PathLike, manifest: Manifest, sources: Mapping[str, PathLike],
                 overwrite: bool = False) -> Bundle:
    """Create a bundle: copy ``sources`` (bundle name -> source file) into ``root``, hash
    the copies into ``manifest.files`` and write ``manifest.json`` atomically.

    ``sources`` must include both graph files. A non-empty ``root`` is refused unless
    ``overwrite``; then any old ``manifest.json`` is removed first, so a failure part-way
    never leaves a manifest that does not describe the files next to it. Other files
    already in ``root`` are left alone.
    """
    root = Path(root)
    names = {c.relpath(f"sources[{k!r}]", k): Path(v) for k, v in sources.items()}
    if MANIFEST_FILE in names:
        raise BundleError(f"sources must not include {MANIFEST_FILE!r}; it is written from the manifest")
    for role in ("trunk", "head"):
        graph_file = getattr(manifest, role).file
        if graph_file not in names:
            raise BundleError(f"sources lack the {role} graph file {graph_file!r} (graphs.{role}.file)")
    for name, src in names.items():
        if not src.is_file():
            raise BundleError(f"source for bundle file {name!r} does not exist or is not a file: {str(src)!r}")
    if root.exists() and not root.is_dir():
        raise BundleError(f"bundle path {str(root)!r} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise BundleError(f"bundle directory {str(root)!r} is not empty; pass overwrite=True to replace it")
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / MANIFEST_FILE).unlink(missing_ok=True)
        hashes = {}
        for name, src in names.items():
            dest = safe_bundle_path(root, name)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not (dest.exists() and os.path.samefile(src, dest)):
                shutil.copyfile(src, dest)
            hashes[name] = sha256_file(dest)
        sealed = dataclasses.replace(manifest, files=hashes)
        digest = _write_manifest_atomically(root, sealed)
    except OSError as exc:
        raise BundleError(f"cannot write bundle {str(root)!r}: {exc}") from exc
    return Bundle(root=root, manifest=sealed, digest=digest)
