"""Signing keys for the TUF repository: ed25519 keys per role, one file per key, encrypted at rest.

Layout (``format`` 2)::

    keydir/keys.json                 public index: per role threshold, current and retired keys
                                     (keyid, public key, file) -- no secrets
    keydir/root/root-1.pem           PKCS8 PEM, encrypted (BestAvailableEncryption) with the passphrase
    keydir/targets/targets-1.pem
    keydir/snapshot/snapshot-1.pem
    keydir/timestamp/timestamp-1.pem

Each role lives in its own folder so that ``root/`` and ``targets/`` can be kept offline (a
USB stick, a safe): :func:`load_keys` loads only the roles it is asked for, and
:func:`keys_for_publish` asks for root only when the repository's root must be re-signed (a
rotation, or the very first publish). Public keys of the other roles come from the index.

The passphrase comes from (first found): the ``passphrase`` argument, the file named by
``passphrase_file``, ``$EDGEUQ_OTA_PASSPHRASE_<ROLE>``, ``$EDGEUQ_OTA_PASSPHRASE``, or a prompt
when stdin is a terminal. Nothing is ever loaded or skipped silently: a missing key file is
an error naming the file.

Rotation (``rotate_key``) retires the current keys of a role. A root rotation keeps the retired
root keys because the next root version must carry a threshold of signatures of the *old*
root as well as of the new one; :func:`keys_for_publish` refuses (naming the missing files)
when too few retired root keys are at hand.

The format-1 layout (``keys.json`` without ``format``, unencrypted ``ROLE-N.pem`` next to it)
still loads, with a warning that names the command to run: ``edgeuq keys migrate KEYDIR``.
"""
from __future__ import annotations

import getpass
import json
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from edgeuq_runtime.atomic import atomic_write

__all__ = ["ROLES", "KeyDirError", "KeySet", "generate_keys", "rotate_key", "load_keys", "keys_for_publish",
           "migrate_keys", "read_index", "Passphrase", "passphrase_source", "PASSPHRASE_ENV", "LegacyKeyDirWarning"]

ROLES = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES = ("snapshot", "timestamp")
INDEX = "keys.json"
FORMAT = 2
PASSPHRASE_ENV = "EDGEUQ_OTA_PASSPHRASE"


class KeyDirError(ValueError):
    """Bad or missing key directory, key file or passphrase."""


class LegacyKeyDirWarning(UserWarning):
    """A key directory in the old, unencrypted one-folder layout was loaded."""


class _Signers(dict):
    """role -> signers; a role that was not loaded (kept offline) raises a clear error."""

    def __missing__(self, role: str):
        raise KeyDirError(f"the private keys of role {role!r} were not loaded (kept offline); load them with "
                          f"load_keys(keydir, roles=[..., {role!r}]) or pass them to the command that needs them")


@dataclass(frozen=True)
class KeySet:
    """Signers per loaded role, retired root signers, thresholds, and the public keys of every
    role (from the index, so roles kept offline can still be listed in a root)."""

    signers: Dict[str, Tuple[object, ...]]
    retired_root: Tuple[object, ...]
    thresholds: Dict[str, int]
    public_keys: Dict[str, Tuple[object, ...]] = field(default_factory=dict)
    loaded: Tuple[str, ...] = ROLES

    def public(self, role: str) -> List[object]:
        if role in self.signers:
            return [s.public_key for s in self.signers[role]]
        if role in self.public_keys:
            return list(self.public_keys[role])
        raise KeyDirError(f"no public keys of role {role!r} in this key set")


# -- passphrases -----------------------------------------------------------------------------------
Passphrase = Union[None, str, bytes, Callable[[str], bytes]]


def passphrase_source(passphrase: Passphrase = None, passphrase_file: Optional[Path] = None,
                      prompt: Optional[bool] = None, confirm: bool = False) -> Callable[[str], bytes]:
    """A function role -> passphrase bytes, resolved in the documented order (see module doc)."""
    if callable(passphrase):
        return passphrase
    if passphrase is not None:
        fixed = passphrase.encode() if isinstance(passphrase, str) else bytes(passphrase)
        if not fixed:
            raise KeyDirError("the passphrase is empty")
        return lambda role: fixed
    if passphrase_file is not None:
        try:
            text = Path(passphrase_file).read_bytes().rstrip(b"\r\n")
        except OSError as exc:
            raise KeyDirError(f"cannot read the passphrase file {str(passphrase_file)!r}: {exc}") from None
        if not text:
            raise KeyDirError(f"the passphrase file {str(passphrase_file)!r} is empty")
        return lambda role: text
    cache: Dict[str, bytes] = {}

    def resolve(role: str) -> bytes:
        for var in (f"{PASSPHRASE_ENV}_{role.upper()}", PASSPHRASE_ENV):
            val = os.environ.get(var)
            if val:
                return val.encode()
        if "" in cache:
            return cache[""]
        can_prompt = sys.stdin is not None and sys.stdin.isatty() if prompt is None else prompt
        if not can_prompt:
            raise KeyDirError(f"no passphrase for the {role} key: set ${PASSPHRASE_ENV} (or "
                              f"${PASSPHRASE_ENV}_{role.upper()}), pass --passphrase-file, or run in a terminal")
        pw = getpass.getpass("edgeuq key passphrase: ").encode()
        if confirm and getpass.getpass("again: ").encode() != pw:
            raise KeyDirError("the passphrases do not match")
        if not pw:
            raise KeyDirError("the passphrase is empty")
        cache[""] = pw
        return pw
    return resolve


# -- files -------------------------------------------------------------------------------------------
def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_index(keydir: Path, index: Dict) -> None:
    atomic_write(keydir / INDEX, json.dumps(index, indent=2, sort_keys=True) + "\n", durable=True)


def read_index(keydir: Path) -> Dict:
    keydir = Path(keydir)
    try:
        index = json.loads((keydir / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyDirError(f"no {INDEX} in {str(keydir)!r}; run `edgeuq keys generate {keydir}` first") from None
    except ValueError as exc:
        raise KeyDirError(f"{keydir / INDEX} is not JSON: {exc}") from None
    if not isinstance(index, dict) or set(index.get("roles", {})) != set(ROLES):
        raise KeyDirError(f"{keydir / INDEX} does not list the roles {list(ROLES)}")
    return index


def _legacy(index: Mapping) -> bool:
    return index.get("format") is None


def _new_private():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def _signer(private):
    from securesystemslib.signer import CryptoSigner

    return CryptoSigner(private)


def _encrypt(private, pw: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization as ser

    return private.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.BestAvailableEncryption(pw))


def _load_private(path: Path, pw: Optional[bytes]):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyDirError(f"key file {str(path)!r} is missing (moved offline? pass its folder, or put it back)") from None
    try:
        return load_pem_private_key(data, password=pw)
    except TypeError as exc:  # encrypted without a password, or a password for a plain key
        raise KeyDirError(f"key file {str(path)!r}: {exc}") from None
    except ValueError as exc:
        raise KeyDirError(f"cannot decrypt key file {str(path)!r} (wrong passphrase or damaged file): {exc}") from None


def _public_of(entry: Mapping):
    from securesystemslib.signer import SSlibKey

    return SSlibKey.from_dict(entry["keyid"], dict(entry["public"]))


def _role_dir(keydir: Path, role: str, role_dirs: Optional[Mapping[str, Path]]) -> Path:
    if role_dirs and role in role_dirs:
        return Path(role_dirs[role])
    return keydir / role


def _add_key(keydir: Path, role: str, index: Dict, pw: Callable[[str], bytes]) -> str:
    private = _new_private()
    signer = _signer(private)
    entry = index["roles"][role]
    n = 1 + len(entry["current"]) + len(entry["retired"])
    name = f"{role}-{n}.pem"
    _write_private(keydir / role / name, _encrypt(private, pw(role)))
    entry["current"].append({"file": f"{role}/{name}", "keyid": signer.public_key.keyid,
                             "public": signer.public_key.to_dict()})
    return signer.public_key.keyid


# -- public API --------------------------------------------------------------------------------------
def generate_keys(keydir: Path, thresholds: Optional[Dict[str, int]] = None, counts: Optional[Dict[str, int]] = None,
                  passphrase: Passphrase = None, passphrase_file: Optional[Path] = None) -> Dict:
    """Create a new key directory: ``counts[role]`` keys (default max(1, threshold)) per role, each
    encrypted with the passphrase, each role in its own folder."""
    keydir = Path(keydir)
    if (keydir / INDEX).exists():
        raise KeyDirError(f"{str(keydir)!r} already holds keys; use rotate")
    thresholds, counts = dict(thresholds or {}), dict(counts or {})
    unknown = sorted((set(thresholds) | set(counts)) - set(ROLES))
    if unknown:
        raise KeyDirError(f"unknown roles {unknown}; roles: {list(ROLES)}")
    for role in ROLES:
        t, c = int(thresholds.get(role, 1)), int(counts.get(role, max(1, int(thresholds.get(role, 1)))))
        if t < 1 or t > c:
            raise KeyDirError(f"{role}: threshold {t} must be between 1 and the number of keys {c}")
    pw = passphrase_source(passphrase, passphrase_file, confirm=True)
    keydir.mkdir(parents=True, exist_ok=True)
    index: Dict[str, Any] = {"format": FORMAT, "roles": {
        r: {"threshold": int(thresholds.get(r, 1)), "current": [], "retired": []} for r in ROLES}}
    for role in ROLES:
        for _ in range(int(counts.get(role, max(1, index["roles"][role]["threshold"])))):
            _add_key(keydir, role, index, pw)
    _write_index(keydir, index)
    return index


def rotate_key(keydir: Path, role: str, threshold: Optional[int] = None, count: Optional[int] = None,
               passphrase: Passphrase = None, passphrase_file: Optional[Path] = None) -> Dict:
    """Retire every current key of ``role`` and create ``count`` new ones (default: as many as before).

    The retired files stay where they are: the next publish needs the retired *root* keys once
    (the new root version is signed by old and new root keys)."""
    keydir = Path(keydir)
    if role not in ROLES:
        raise KeyDirError(f"unknown role {role!r}; roles: {list(ROLES)}")
    index = read_index(keydir)
    if _legacy(index):
        raise KeyDirError(f"{str(keydir)!r} uses the old unencrypted key layout; run `edgeuq keys migrate {keydir}` "
                          "before rotating")
    entry = index["roles"][role]
    n = int(count or len(entry["current"]))
    t = int(entry["threshold"] if threshold is None else threshold)
    if t < 1 or t > n:
        raise KeyDirError(f"{role}: threshold {t} must be between 1 and the number of keys {n}")
    pw = passphrase_source(passphrase, passphrase_file)
    entry["retired"] = entry["retired"] + entry["current"]
    entry["current"] = []
    entry["threshold"] = t
    for _ in range(n):
        _add_key(keydir, role, index, pw)
    _write_index(keydir, index)
    return index


def load_keys(keydir: Path, roles: Sequence[str] = ROLES, passphrase: Passphrase = None,
              passphrase_file: Optional[Path] = None, retired_root: Optional[Iterable[str]] = None,
              role_dirs: Optional[Mapping[str, Path]] = None) -> KeySet:
    """Load the private keys of ``roles`` (and public keys of all roles from the index).

    ``retired_root``: keyids of retired root keys to load as well (default: every retired root
    key when ``root`` is among ``roles``, none otherwise). Every key asked for must load: a
    missing file or a wrong passphrase is a :class:`KeyDirError` naming the file.
    ``role_dirs`` maps a role to the folder holding its key files (e.g. an offline medium)."""
    keydir = Path(keydir)
    index = read_index(keydir)
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise KeyDirError(f"unknown roles {unknown}; roles: {list(ROLES)}")
    if _legacy(index):
        return _load_legacy(keydir, index, roles, retired_root)
    pw = passphrase_source(passphrase, passphrase_file)

    def load(role: str, entry: Mapping):
        path = _role_dir(keydir, role, role_dirs) / Path(entry["file"]).name
        signer = _signer(_load_private(path, pw(role)))
        if signer.public_key.keyid != entry["keyid"]:
            raise KeyDirError(f"key file {str(path)!r} holds key {signer.public_key.keyid[:12]}..., the index "
                              f"says {entry['keyid'][:12]}...")
        return signer

    signers = _Signers({r: tuple(load(r, e) for e in index["roles"][r]["current"]) for r in ROLES if r in roles})
    if retired_root is None:
        retired_root = [e["keyid"] for e in index["roles"]["root"]["retired"]] if "root" in roles else []
    wanted = set(retired_root)
    retired_entries = [e for e in index["roles"]["root"]["retired"] if e["keyid"] in wanted]
    missing = wanted - {e["keyid"] for e in retired_entries}
    if missing:
        raise KeyDirError(f"retired root keys {sorted(k[:12] for k in missing)} are not in {keydir / INDEX}")
    retired = tuple(load("root", e) for e in retired_entries)
    public = {r: tuple(_public_of(e) for e in index["roles"][r]["current"]) for r in ROLES}
    return KeySet(signers=signers, retired_root=retired, public_keys=public, loaded=tuple(r for r in ROLES if r in roles),
                  thresholds={r: int(index["roles"][r]["threshold"]) for r in ROLES})


def _load_legacy(keydir: Path, index: Mapping, roles: Sequence[str], retired_root: Optional[Iterable[str]]) -> KeySet:
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    warnings.warn(f"{str(keydir)!r} uses the old key layout (all roles in one folder, private keys unencrypted); "
                  f"run `edgeuq keys migrate {keydir}` to encrypt them and split the roles", LegacyKeyDirWarning,
                  stacklevel=3)

    def load(entry: Mapping):
        path = keydir / entry["file"]
        try:
            return _signer(load_pem_private_key(path.read_bytes(), password=None))
        except FileNotFoundError:
            raise KeyDirError(f"key file {str(path)!r} is missing") from None
    # the old layout has no public keys in its index: every role's private keys must be loaded
    signers = _Signers({r: tuple(load(e) for e in index["roles"][r]["current"]) for r in ROLES})
    wanted = set(retired_root) if retired_root is not None else {e["keyid"] for e in index["roles"]["root"]["retired"]}
    retired = tuple(load(e) for e in index["roles"]["root"]["retired"] if e["keyid"] in wanted)
    return KeySet(signers=signers, retired_root=retired, thresholds={r: int(index["roles"][r]["threshold"]) for r in ROLES},
                  public_keys={r: tuple(s.public_key for s in signers[r]) for r in ROLES}, loaded=ROLES)


def migrate_keys(keydir: Path, passphrase: Passphrase = None, passphrase_file: Optional[Path] = None) -> Dict:
    """Convert a format-1 key directory in place: every key (retired ones included) encrypted into
    its role's folder, public keys in the index; the plaintext files are removed afterwards."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    keydir = Path(keydir)
    index = read_index(keydir)
    if not _legacy(index):
        raise KeyDirError(f"{str(keydir)!r} is already in the format-{index['format']} layout")
    pw = passphrase_source(passphrase, passphrase_file, confirm=True)
    new: Dict[str, Any] = {"format": FORMAT, "roles": {}}
    plain: List[Path] = []
    for role in ROLES:
        old = index["roles"][role]
        out = {"threshold": int(old["threshold"]), "current": [], "retired": []}
        for kind in ("current", "retired"):
            for e in old[kind]:
                src = keydir / e["file"]
                if not src.exists():
                    if kind == "retired":
                        warnings.warn(f"retired key file {str(src)!r} is missing; it is dropped from the index "
                                      "(a root rotation that still needs it will fail)", LegacyKeyDirWarning)
                        continue
                    raise KeyDirError(f"key file {str(src)!r} is missing")
                private = load_pem_private_key(src.read_bytes(), password=None)
                signer = _signer(private)
                name = Path(e["file"]).name
                _write_private(keydir / role / name, _encrypt(private, pw(role)))
                out[kind].append({"file": f"{role}/{name}", "keyid": signer.public_key.keyid,
                                  "public": signer.public_key.to_dict()})
                plain.append(src)
        new["roles"][role] = out
    _write_index(keydir, new)
    for p in plain:
        p.unlink()
    return new


def _root_needs(repo_dir: Path) -> Optional[Dict[str, Any]]:
    """The newest root of the repository in ``repo_dir`` as a dict, or None when there is none."""
    meta = Path(repo_dir) / "metadata"
    versions = [int(p.name.split(".")[0]) for p in meta.glob("*.root.json") if p.name.split(".")[0].isdigit()]
    if not versions:
        return None
    return json.loads((meta / f"{max(versions)}.root.json").read_text(encoding="utf-8"))["signed"]


def keys_for_publish(keydir: Path, repo_dir: Path, passphrase: Passphrase = None,
                     passphrase_file: Optional[Path] = None, roles: Sequence[str] = ("targets",) + ONLINE_ROLES,
                     role_dirs: Optional[Mapping[str, Path]] = None) -> KeySet:
    """Only the keys a publish needs: ``roles`` (targets + snapshot + timestamp for a release;
    snapshot + timestamp for a refresh), plus root -- current keys and the retired ones the
    current root lists -- only when the repository's root must be (re-)signed: there is none yet,
    or the key directory's keys or thresholds differ from it (a rotation).

    A rotation with fewer retired root keys at hand than the old root's threshold is refused
    here, naming the missing files; a missing retired key that is not needed is reported as a
    warning, never skipped silently."""
    keydir = Path(keydir)
    index = read_index(keydir)
    root = _root_needs(repo_dir)
    if _legacy(index):
        return load_keys(keydir, ROLES)
    want = {r: ({e["keyid"] for e in index["roles"][r]["current"]}, int(index["roles"][r]["threshold"])) for r in ROLES}
    if root is not None:
        have = {r: (set(root["roles"][r]["keyids"]), int(root["roles"][r]["threshold"])) for r in ROLES}
        if want == have:
            return load_keys(keydir, roles, passphrase, passphrase_file, role_dirs=role_dirs)
    if root is None:  # the first publish signs root v1 and every role's first version
        return load_keys(keydir, ROLES, passphrase, passphrase_file, retired_root=[], role_dirs=role_dirs)
    # a rotation: the new root needs a threshold of the old root keys too
    old_ids = set(root["roles"]["root"]["keyids"])
    old_threshold = int(root["roles"]["root"]["threshold"])
    rdir = _role_dir(keydir, "root", role_dirs)
    current_old = [e for e in index["roles"]["root"]["current"] if e["keyid"] in old_ids]
    retired_old = [e for e in index["roles"]["root"]["retired"] if e["keyid"] in old_ids]
    present = [e for e in retired_old if (rdir / Path(e["file"]).name).exists()]
    absent = [e for e in retired_old if e not in present]
    unknown = old_ids - {e["keyid"] for e in current_old + retired_old}
    if len(current_old) + len(present) < old_threshold:
        names = [str(rdir / Path(e["file"]).name) for e in absent]
        raise KeyDirError(f"the root is being rotated: root v{root['version'] + 1} must be signed by {old_threshold} "
                          f"of the old root keys, but only {len(current_old) + len(present)} are at hand; missing key "
                          f"files: {names or '(none listed)'}"
                          + (f"; {len(unknown)} old root keys are not in {INDEX} at all" if unknown else "")
                          + ". Put the retired root keys back (or pass their folder) and publish again.")
    if absent:
        warnings.warn(f"retired root key files {[str(rdir / Path(e['file']).name) for e in absent]} are missing; "
                      f"the old root's threshold {old_threshold} is still met without them", UserWarning)
    return load_keys(keydir, tuple(r for r in ROLES if r == "root" or r in roles), passphrase, passphrase_file,
                     retired_root=[e["keyid"] for e in present], role_dirs=role_dirs)
