"""One base for every stage output: versioned, hashed, written atomically, verified on load.

An artifact is a folder holding payload files (``model.pt``, ``trunk.onnx``, ...) and one
metadata JSON file (the *envelope*) that is written last and is the commit point::

    {"kind": "checkpoint", "format_version": 2,
     "files": {"model.pt": "<sha256>"},          # every payload file and its sha256
     "inputs": "<digest of what it was made from, or ''>",
     "meta": {...},                               # the artifact's own fields (to_meta)
     "digest": "<sha256 of the canonical JSON of everything above>"}

Loading checks that the envelope is JSON, its ``kind`` and ``format_version``, that
every listed file is a regular file inside the folder with the recorded sha256, and
that ``digest`` matches; any problem raises :class:`ArtifactError` naming it
(:class:`ArtifactNotFound`, also a ``FileNotFoundError``, when there is nothing to load).
``Artifact.digest`` is the artifact's identity: stages record their inputs' digests
(``inputs``) and :func:`cached` returns a stored output made from the same inputs.

Writing (:class:`ArtifactWriter`) stages every file in a temporary folder next to the
target, fsyncs it, then renames it into place (the whole folder if the target does not
exist yet, otherwise file by file with the envelope last, after removing the old
envelope), so an interrupted write never leaves an artifact that loads.

Defining a new artifact type (copy this)::

    from dataclasses import dataclass
    from typing import ClassVar, Tuple
    from edgeuq.artifact import Artifact, ArtifactWriter

    @dataclass(frozen=True)
    class PrunePlan(Artifact):
        KIND: ClassVar[str] = "prune_plan"
        FORMAT_VERSION: ClassVar[int] = 1
        META_FILE: ClassVar[str] = "prune_plan.json"

        heads: Tuple[int, ...]
        mask_file: str = "masks.npz"

        def payload_files(self) -> Tuple[str, ...]:   # files listed and hashed (default: none)
            return (self.mask_file,)

        def to_meta(self) -> dict:                   # JSON-able fields
            return {"heads": list(self.heads), "mask_file": self.mask_file}

        @classmethod
        def from_meta(cls, meta, **base) -> "PrunePlan":
            return cls(heads=tuple(meta["heads"]), mask_file=meta["mask_file"], **base)

    def save_prune_plan(heads, masks, out_dir) -> PrunePlan:
        with ArtifactWriter(out_dir) as w:
            np.savez(w.path / "masks.npz", **masks)
            return w.commit(PrunePlan(heads=tuple(heads)))   # loaded back, verified

    plan = PrunePlan.load(out_dir)                  # or PrunePlan.load(out_dir / "prune_plan.json")

Bump ``FORMAT_VERSION`` whenever ``to_meta``'s layout changes; old files are then refused
with a message naming both versions.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Dict, Mapping, Optional, Tuple, Type, TypeVar, Union

__all__ = [
    "Artifact", "ArtifactError", "ArtifactNotFound", "ArtifactWriter", "cached", "digest_of", "sha256_file", "with_inputs",
]

A = TypeVar("A", bound="Artifact")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_MAX_ENVELOPE_BYTES = 64 << 20


class ArtifactError(ValueError):
    """An artifact on disk is missing, malformed, of another kind or version, or altered."""


class ArtifactNotFound(ArtifactError, FileNotFoundError):
    """There is no artifact at the given path (no envelope file)."""


def sha256_file(path: Union[str, Path], chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                return h.hexdigest()
            h.update(block)


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False, default=str).encode()


def digest_of(*parts: Any) -> str:
    """sha256 of JSON-able ``parts`` (artifacts count by their ``digest``): the key of a stage's inputs."""
    norm = [p.digest if isinstance(p, Artifact) else p for p in parts]
    return hashlib.sha256(_canonical(norm)).hexdigest()


def _envelope_digest(kind: str, version: int, files: Mapping[str, str], inputs: str, meta: Any) -> str:
    return hashlib.sha256(_canonical(
        {"kind": kind, "format_version": version, "files": dict(files), "inputs": inputs, "meta": meta})).hexdigest()


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _safe_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not name or name.startswith(("/", "\\")) or "\\" in name \
            or any(part in ("", ".", "..") for part in name.split("/")):
        raise ArtifactError(f"{where}: file name {name!r} is not a plain relative path inside the artifact")
    return name


def _check_hashes(directory: Path, files: Mapping[str, str], kind: str, meta_file: str) -> None:
    for name, digest in files.items():
        p = directory / name
        if not p.is_file():
            raise ArtifactError(f"{kind} at {directory}: file {name} is missing")
        actual = sha256_file(p)
        if actual != digest:
            raise ArtifactError(f"{kind} at {directory}: {name} changed since saving: it does not match the sha256 "
                                f"recorded in {meta_file} ({actual[:12]}… != {digest[:12]}…)")


@dataclass(frozen=True)
class Artifact:
    """Base of every stage output; see the module docstring for how to define one.

    Fields common to all artifacts are keyword-only and filled in by ``load``/``commit``:
    ``directory`` (where it lives), ``files`` (payload name -> sha256), ``inputs`` (digest
    of what it was made from) and ``digest`` (its identity).
    """

    KIND: ClassVar[str] = ""
    FORMAT_VERSION: ClassVar[int] = 0
    META_FILE: ClassVar[str] = ""

    directory: Optional[Path] = field(default=None, kw_only=True, compare=False)
    files: Mapping[str, str] = field(default_factory=dict, kw_only=True, compare=False)
    inputs: str = field(default="", kw_only=True, compare=False)
    digest: str = field(default="", kw_only=True, compare=False)

    # ---------------------------------------------------------------- subclass hooks
    def payload_files(self) -> Tuple[str, ...]:
        """Names (relative to the folder) of the files this artifact lists and hashes."""
        return ()

    def to_meta(self) -> Dict[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} must define to_meta()")

    @classmethod
    def from_meta(cls: Type[A], meta: Mapping[str, Any], **base: Any) -> A:
        raise NotImplementedError(f"{cls.__name__} must define from_meta()")

    # ---------------------------------------------------------------- paths and checks
    def file_path(self, name: str) -> Path:
        if self.directory is None:
            raise ArtifactError(f"{type(self).__name__} has not been saved: no directory")
        return Path(self.directory) / name

    def verify_files(self) -> None:
        """Re-hash every payload file; raise ArtifactError if one changed since it was written."""
        if self.directory is None:
            raise ArtifactError(f"{type(self).__name__} has not been saved: no directory")
        _check_hashes(Path(self.directory), self.files, self.KIND, self.META_FILE)

    # ---------------------------------------------------------------- load
    @classmethod
    def envelope_path(cls, path: Union[str, Path]) -> Path:
        """``path`` may be the artifact folder or its envelope file."""
        path = Path(path)
        return path if path.suffix == ".json" and not path.is_dir() else path / cls.META_FILE

    @classmethod
    def load(cls: Type[A], path: Union[str, Path], verify: bool = True) -> A:
        """Load and verify the artifact at ``path`` (folder or envelope file)."""
        env = cls.envelope_path(path)
        directory = env.parent
        if not env.is_file():
            raise ArtifactNotFound(f"no {cls.KIND} at {Path(path)}: {env.name} missing")
        if env.stat().st_size > _MAX_ENVELOPE_BYTES:
            raise ArtifactError(f"{env}: envelope larger than {_MAX_ENVELOPE_BYTES} bytes")
        try:
            d = json.loads(env.read_bytes())
        except (ValueError, RecursionError) as exc:
            raise ArtifactError(f"{env} is not valid JSON: {exc}") from exc
        if not isinstance(d, dict):
            raise ArtifactError(f"{env}: expected a JSON object, got {type(d).__name__}")
        kind = d.get("kind")
        if kind != cls.KIND:
            hint = f" (format {d['format']!r}, written before artifacts were versioned: re-create it)" \
                if "format" in d and kind is None else ""
            raise ArtifactError(f"{env}: kind {kind!r}, expected {cls.KIND!r}{hint}")
        version = d.get("format_version")
        if type(version) is not int or version != cls.FORMAT_VERSION:
            raise ArtifactError(f"{env}: unsupported {cls.KIND} format_version {version!r} "
                                f"(this edgeuq reads {cls.FORMAT_VERSION})")
        files, inputs, meta, digest = d.get("files"), d.get("inputs", ""), d.get("meta"), d.get("digest")
        if not isinstance(files, dict) or not all(isinstance(v, str) and _HEX64.match(v) for v in files.values()):
            raise ArtifactError(f"{env}: 'files' must map file names to sha256 hex digests")
        if not isinstance(meta, dict):
            raise ArtifactError(f"{env}: 'meta' must be a JSON object")
        if not isinstance(inputs, str):
            raise ArtifactError(f"{env}: 'inputs' must be a string")
        expected = _envelope_digest(kind, version, files, inputs, meta)
        if digest != expected:
            raise ArtifactError(f"{env}: digest {str(digest)[:12]}… does not match its content "
                                f"({expected[:12]}…): the metadata was edited after writing")
        root = directory.resolve()
        for name in files:
            _safe_name(name, str(env))
            p = directory / name
            if p.is_symlink() or not p.resolve().is_relative_to(root):
                raise ArtifactError(f"{env}: {name} is a link or resolves outside {directory}")
            if not p.is_file():
                raise ArtifactError(f"{env}: listed file {name} is missing")
        if verify:
            _check_hashes(directory, files, cls.KIND, env.name)
        try:
            return cls.from_meta(meta, directory=directory, files=dict(files), inputs=inputs, digest=digest)
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(f"{env}: malformed {cls.KIND} metadata: {type(exc).__name__}: {exc}") from exc


class ArtifactWriter:
    """Stage an artifact's files next to ``target`` and commit them atomically.

    ``with ArtifactWriter(out_dir) as w:`` write payload files under ``w.path``, then
    ``return w.commit(artifact)``; leaving the block without committing (an exception,
    a failed check) removes the staged files and leaves ``out_dir`` as it was.
    """

    def __init__(self, target: Union[str, Path]) -> None:
        self.target = Path(target)
        self.path: Path = Path()
        self._committed = False

    def __enter__(self) -> "ArtifactWriter":
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.staging-", dir=self.target.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.path, 0o777 & ~umask)  # mkdtemp's 0700 would become the artifact folder's mode
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.path.exists():
            shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, artifact: A, meta_file: Optional[str] = None) -> A:
        """Hash the staged payload, write the envelope, move both into ``target``; return the
        artifact as loaded (and verified) from there. ``meta_file`` renames the envelope."""
        if self._committed:
            raise RuntimeError("ArtifactWriter.commit called twice")
        cls = type(artifact)
        meta_name = _safe_name(meta_file or cls.META_FILE, cls.KIND)
        names = [_safe_name(n, cls.KIND) for n in artifact.payload_files()]
        files: Dict[str, str] = {}
        for name in names:
            p = self.path / name
            if not p.is_file() or p.is_symlink():
                raise ArtifactError(f"{cls.KIND}: payload file {name} was not written under {self.path}")
            _fsync_file(p)
            files[name] = sha256_file(p)
        meta = json.loads(_canonical(artifact.to_meta()))  # JSON round trip: what load will see
        digest = _envelope_digest(cls.KIND, cls.FORMAT_VERSION, files, artifact.inputs, meta)
        env = {"kind": cls.KIND, "format_version": cls.FORMAT_VERSION, "files": files,
               "inputs": artifact.inputs, "meta": meta, "digest": digest}
        with open(self.path / meta_name, "w") as f:
            f.write(json.dumps(env, indent=2, sort_keys=True, allow_nan=False))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(self.path)
        if not self.target.exists():
            os.rename(self.path, self.target)
        else:
            old_env = self.target / meta_name
            if old_env.exists():
                old_env.unlink()
                _fsync_dir(self.target)
            for name in names:
                dst = self.target / name
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.path / name, dst)
            _fsync_dir(self.target)
            os.replace(self.path / meta_name, old_env)
        _fsync_dir(self.target)
        _fsync_dir(self.target.parent)
        self._committed = True
        return cls.load(self.target / meta_name)


def cached(artifact_cls: Type[A], out_dir: Union[str, Path], inputs_digest: str) -> Optional[A]:
    """The ``artifact_cls`` stored at ``out_dir`` if it loads, verifies and was made from
    ``inputs_digest`` (its ``inputs``); ``None`` when a stage must (re)compute it.

        key = digest_of(checkpoint, settings.to_dict())
        rep = cached(FisherReport, out, key) or estimate_fisher(...).save(out, inputs=key)
    """
    try:
        art = artifact_cls.load(out_dir)
    except ArtifactError:
        return None
    return art if inputs_digest and art.inputs == inputs_digest else None


def with_inputs(artifact: A, inputs_digest: str) -> A:
    """A copy of ``artifact`` recording ``inputs_digest`` (before committing it)."""
    return replace(artifact, inputs=inputs_digest)
