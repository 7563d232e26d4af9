"""An in-memory TUF repository (python-tuf metadata API) that serializes to a static tree.

    repo = TufRepository.create(keys)                  # or TufRepository.load(dir, keys)
    repo.add_target(path, data, custom)                 # bundles, deltas, channel files
    repo.publish(keys)                                  # bump + sign targets, snapshot, timestamp
    repo.save(dir)                                      # metadata/ + targets/ (any static server)

Consistent snapshots: ``metadata/N.root.json``, ``N.targets.json``, ``N.snapshot.json``,
``timestamp.json``; targets as ``targets/<dir>/<sha256>.<name>``. The same object serves
the in-memory repository simulator of the fault suite (``files()`` -> path -> bytes).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import MetaFile, Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgeuq_runtime.atomic import atomic_write

from .keys import ROLES, KeySet

__all__ = ["EXPIRY_DAYS", "TufRepository", "target_file_name", "RootRotationError", "expiry_report"]

#: Default lifetime per role (days): a timestamp must be re-signed daily to stay fresh.
EXPIRY_DAYS: Dict[str, float] = {"root": 365.0, "targets": 90.0, "snapshot": 7.0, "timestamp": 1.0}
_SER = JSONSerializer(compact=False)


class RootRotationError(ValueError):
    """A new root version would not be trusted by devices (old-root threshold not met)."""


def expiry_report(repo: "TufRepository", warn_days: float, now: Optional[datetime] = None) -> List[Tuple[str, datetime, float, bool]]:
    """(role, expires, days left, warn) per top-level role; ``warn`` when fewer than
    ``warn_days`` days are left (a device refuses expired metadata: re-sign in time)."""
    now = now or datetime.now(timezone.utc)
    out = []
    for role, md in (("root", repo.root), ("targets", repo.targets), ("snapshot", repo.snapshot),
                     ("timestamp", repo.timestamp)):
        left = (md.signed.expires - now).total_seconds() / 86400.0
        out.append((role, md.signed.expires, left, not left >= warn_days))
    return out


def _expiry(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


def target_file_name(path: str, sha256: str) -> str:
    """Where a consistent-snapshot target lives under ``targets/``."""
    d, _, base = path.rpartition("/")
    return f"{d}/{sha256}.{base}" if d else f"{sha256}.{base}"


@dataclass
class TufRepository:
    roots: Dict[int, bytes]                 # every signed root version (clients walk the chain)
    root: Metadata
    targets: Metadata
    snapshot: Metadata
    timestamp: Metadata
    blobs: Dict[str, bytes] = field(default_factory=dict)   # target path -> bytes (new or loaded)
    target_dir: Optional[Path] = None      # where existing blobs live when loaded from disk

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def create(cls, keys: KeySet, expiry_days: Mapping[str, float] = EXPIRY_DAYS) -> "TufRepository":
        root = Root(expires=_expiry(expiry_days["root"]), consistent_snapshot=True)
        for role in ROLES:
            for key in keys.public(role):
                root.add_key(key, role)
            root.roles[role].threshold = keys.thresholds[role]
        md = Metadata(root)
        for s in keys.signers["root"]:
            md.sign(s, append=True)
        repo = cls(roots={1: md.to_bytes(_SER)}, root=md,
                   targets=Metadata(Targets(expires=_expiry(expiry_days["targets"]))),
                   snapshot=Metadata(Snapshot(expires=_expiry(expiry_days["snapshot"]))),
                   timestamp=Metadata(Timestamp(expires=_expiry(expiry_days["timestamp"]))))
        repo.targets.signed.version = 0  # publish() bumps every role to 1
        repo.snapshot.signed.version = 0
        repo.timestamp.signed.version = 0
        return repo

    @classmethod
    def load(cls, repo_dir: Path) -> "TufRepository":
        meta = Path(repo_dir) / "metadata"
        roots = {}
        for p in meta.glob("*.root.json"):
            roots[int(p.name.split(".")[0])] = p.read_bytes()
        if not roots:
            raise FileNotFoundError(f"no N.root.json under {meta}")
        ts = Metadata[Timestamp].from_file(str(meta / "timestamp.json"))
        sn = Metadata[Snapshot].from_file(str(meta / f"{ts.signed.snapshot_meta.version}.snapshot.json"))
        tg = Metadata[Targets].from_file(str(meta / f"{sn.signed.meta['targets.json'].version}.targets.json"))
        return cls(roots=roots, root=Metadata[Root].from_bytes(roots[max(roots)]), targets=tg, snapshot=sn,
                   timestamp=ts, target_dir=Path(repo_dir) / "targets")

    # -- content ---------------------------------------------------------------------------------
    def add_target(self, path: str, data: bytes, custom: Optional[Mapping[str, Any]] = None) -> TargetFile:
        tf = TargetFile.from_data(path, data, ["sha256"])
        if custom is not None:
            tf.unrecognized_fields["custom"] = dict(custom)
        self.targets.signed.targets[path] = tf
        self.blobs[path] = data
        return tf

    def target_bytes(self, path: str) -> bytes:
        if path in self.blobs:
            return self.blobs[path]
        tf = self.targets.signed.targets[path]
        if self.target_dir is None:
            raise KeyError(path)
        data = (self.target_dir / target_file_name(path, tf.hashes["sha256"])).read_bytes()
        tf.verify_length_and_hashes(data)
        return data

    def target_infos(self, prefix: str = "") -> Dict[str, TargetFile]:
        return {p: t for p, t in self.targets.signed.targets.items() if p.startswith(prefix)}

    # -- keys ------------------------------------------------------------------------------------
    def sync_keys(self, keys: KeySet, expiry_days: Mapping[str, float] = EXPIRY_DAYS) -> bool:
        """If the key directory's keys or thresholds differ from the root's, sign a new root
        version with the new root keys *and* the old ones still in the key directory.

        Refuses (:class:`RootRotationError`, nothing changed) unless the new root is signed by
        a threshold of the *previous* root's keys and of its own: a root that devices would
        refuse is never published (every device would be locked out of every later update)."""
        root = self.root.signed
        want = {r: ({k.keyid for k in keys.public(r)}, keys.thresholds[r]) for r in ROLES}
        have = {r: (set(root.roles[r].keyids), root.roles[r].threshold) for r in ROLES}
        if want == have:
            return False
        old_ids = set(root.roles["root"].keyids)
        old_threshold = root.roles["root"].threshold
        signers = list(keys.signers["root"]) + [s for s in keys.retired_root if s.public_key.keyid in old_ids]
        have_old = {s.public_key.keyid for s in signers} & old_ids
        if len(have_old) < old_threshold:
            missing = sorted(k[:12] for k in old_ids - have_old)
            raise RootRotationError(
                f"root v{root.version + 1} needs signatures from {old_threshold} of the {len(old_ids)} keys of root "
                f"v{root.version}, only {len(have_old)} available (missing key ids {missing}); put the retired "
                "root key file(s) back in the key directory (keys.json lists them as retired) and publish again")
        previous = Metadata[Root].from_bytes(self.root.to_bytes(_SER))
        new_md = Metadata[Root].from_bytes(self.root.to_bytes(_SER))
        new = new_md.signed
        for role in ROLES:
            for keyid in list(new.roles[role].keyids):
                new.revoke_key(keyid, role)
            for key in keys.public(role):
                new.add_key(key, role)
            new.roles[role].threshold = keys.thresholds[role]
        new.version += 1
        new.expires = _expiry(expiry_days["root"])
        new_md.signatures.clear()
        for s in signers:
            new_md.sign(s, append=True)
        try:
            previous.verify_delegate(Root.type, new_md)
            new_md.verify_delegate(Root.type, new_md)
        except UnsignedMetadataError as exc:
            raise RootRotationError(f"root v{new.version} would not verify on devices: {exc}") from None
        self.root = new_md
        self.roots[new.version] = new_md.to_bytes(_SER)
        return True

    def publish(self, keys: KeySet, expiry_days: Mapping[str, float] = EXPIRY_DAYS) -> None:
        """New versions of targets, snapshot and timestamp, each signed by its role's keys."""
        t = self.targets.signed
        t.version += 1
        t.expires = _expiry(expiry_days["targets"])
        self._sign(self.targets, keys, "targets")
        self.refresh(keys, expiry_days)

    def refresh(self, keys: KeySet, expiry_days: Mapping[str, float] = EXPIRY_DAYS) -> None:
        """New snapshot and timestamp versions (targets untouched): what an operator runs
        before the 1-day timestamp expires. The snapshot names the targets metadata with its
        length and sha256, the timestamp names the snapshot the same way, so a targets-key
        holder re-signing different content under the same version is caught."""
        import hashlib

        s, ts = self.snapshot.signed, self.timestamp.signed
        tbytes = self.targets.to_bytes(_SER)
        s.version += 1
        s.expires = _expiry(expiry_days["snapshot"])
        s.meta["targets.json"] = MetaFile(version=self.targets.signed.version, length=len(tbytes),
                                          hashes={"sha256": hashlib.sha256(tbytes).hexdigest()})
        self._sign(self.snapshot, keys, "snapshot")
        sbytes = self.snapshot.to_bytes(_SER)
        ts.version += 1
        ts.expires = _expiry(expiry_days["timestamp"])
        ts.snapshot_meta = MetaFile(version=s.version, length=len(sbytes),
                                    hashes={"sha256": hashlib.sha256(sbytes).hexdigest()})
        self._sign(self.timestamp, keys, "timestamp")

    @staticmethod
    def _sign(md: Metadata, keys: KeySet, role: str) -> None:
        md.signatures.clear()
        for signer in keys.signers[role]:
            md.sign(signer, append=True)

    # -- output ----------------------------------------------------------------------------------
    def metadata_files(self) -> Dict[str, bytes]:
        out = {f"metadata/{v}.root.json": b for v, b in self.roots.items()}
        out[f"metadata/{self.targets.signed.version}.targets.json"] = self.targets.to_bytes(_SER)
        out[f"metadata/{self.snapshot.signed.version}.snapshot.json"] = self.snapshot.to_bytes(_SER)
        out["metadata/timestamp.json"] = self.timestamp.to_bytes(_SER)
        return out

    def files(self) -> Dict[str, bytes]:
        """Every file a server must hold for the current version (new blobs + metadata)."""
        out = {f"targets/{target_file_name(p, self.targets.signed.targets[p].hashes['sha256'])}": b
               for p, b in self.blobs.items() if p in self.targets.signed.targets}
        out.update(self.metadata_files())
        return out

    def save(self, repo_dir: Path) -> Dict[str, int]:
        """Write new targets first, then metadata, timestamp.json last (the switch readers see)."""
        repo_dir = Path(repo_dir)
        files = self.files()
        order = sorted(files, key=lambda p: (p == "metadata/timestamp.json", not p.startswith("targets/"), p))
        written = {}
        for rel in order:
            dest = repo_dir / rel
            if rel.startswith("targets/") and dest.exists():
                continue  # content-addressed: already there
            atomic_write(dest, files[rel], durable=True)
            written[rel] = len(files[rel])
        (repo_dir / "metadata" / "root.json").write_bytes(self.roots[max(self.roots)])
        return written
