"""Signing keys for the TUF repository: one ed25519 key per role, rotation keeps the old one.

``keydir/keys.json`` lists, per role, the current key files (with public keys and
threshold) and the retired ones; private keys are PKCS8 PEM files (mode 0600). A
retired root key is still needed once: the next root version must be signed by a
threshold of the *old* root keys as well as the new ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

__all__ = ["ROLES", "KeyDirError", "KeySet", "generate_keys", "rotate_key", "load_keys"]

ROLES = ("root", "targets", "snapshot", "timestamp")
INDEX = "keys.json"


class KeyDirError(ValueError):
    """Bad or missing key directory."""


@dataclass(frozen=True)
class KeySet:
    """Signers per role (current), retired root signers, and thresholds."""

    signers: Dict[str, Tuple[object, ...]]
    retired_root: Tuple[object, ...]
    thresholds: Dict[str, int]

    def public(self, role: str) -> List[object]:
        return [s.public_key for s in self.signers[role]]


def _new_signer():
    from securesystemslib.signer import CryptoSigner

    return CryptoSigner.generate_ed25519()


def _load_signer(path: Path):
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from securesystemslib.signer import CryptoSigner

    return CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _write_index(keydir: Path, index: Dict) -> None:
    tmp = keydir / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, keydir / INDEX)


def _read_index(keydir: Path) -> Dict:
    try:
        return json.loads((keydir / INDEX).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise KeyDirError(f"no {INDEX} in {str(keydir)!r}; run `edgeuq keys generate {keydir}` first") from None


def _add_key(keydir: Path, role: str, index: Dict) -> str:
    signer = _new_signer()
    n = 1 + sum(len(v) for k, v in index["roles"][role].items() if k in ("current", "retired"))
    name = f"{role}-{n}.pem"
    _write_private(keydir / name, signer.private_bytes)
    index["roles"][role]["current"].append({"file": name, "keyid": signer.public_key.keyid})
    return signer.public_key.keyid


def generate_keys(keydir: Path, thresholds: Optional[Dict[str, int]] = None, counts: Optional[Dict[str, int]] = None) -> Dict:
    """Create a new key directory: ``counts[role]`` keys (default 1) and ``thresholds[role]``."""
    keydir = Path(keydir)
    if (keydir / INDEX).exists():
        raise KeyDirError(f"{str(keydir)!r} already holds keys; use rotate")
    keydir.mkdir(parents=True, exist_ok=True)
    thresholds, counts = dict(thresholds or {}), dict(counts or {})
    index = {"roles": {r: {"threshold": int(thresholds.get(r, 1)), "current": [], "retired": []} for r in ROLES}}
    for role in ROLES:
        for _ in range(int(counts.get(role, max(1, index["roles"][role]["threshold"])))):
            _add_key(keydir, role, index)
        if index["roles"][role]["threshold"] > len(index["roles"][role]["current"]):
            raise KeyDirError(f"{role}: threshold above the number of keys")
    _write_index(keydir, index)
    return index


def rotate_key(keydir: Path, role: str, threshold: Optional[int] = None, count: Optional[int] = None) -> Dict:
    """Retire every current key of ``role`` and create ``count`` new ones (default: as many as before)."""
    keydir = Path(keydir)
    if role not in ROLES:
        raise KeyDirError(f"unknown role {role!r}; roles: {list(ROLES)}")
    index = _read_index(keydir)
    entry = index["roles"][role]
    n = int(count or len(entry["current"]))
    entry["retired"] = entry["retired"] + entry["current"]
    entry["current"] = []
    if threshold is not None:
        entry["threshold"] = int(threshold)
    for _ in range(n):
        _add_key(keydir, role, index)
    if entry["threshold"] > len(entry["current"]):
        raise KeyDirError(f"{role}: threshold {entry['threshold']} above the number of keys {len(entry['current'])}")
    _write_index(keydir, index)
    return index


def load_keys(keydir: Path) -> KeySet:
    keydir = Path(keydir)
    index = _read_index(keydir)
    signers = {r: tuple(_load_signer(keydir / k["file"]) for k in index["roles"][r]["current"]) for r in ROLES}
    retired = tuple(_load_signer(keydir / k["file"]) for k in index["roles"]["root"]["retired"]
                    if (keydir / k["file"]).exists())
    return KeySet(signers=signers, retired_root=retired,
                  thresholds={r: int(index["roles"][r]["threshold"]) for r in ROLES})
