"""Staged rollouts on the device: is this device in the rollout of the release the channel names?

The rollout is a signed target next to the channel file (same TUF targets role, so it is as
trustworthy as the channel itself)::

    rollouts/<board>/<model>.json
    {"release": 7, "sha256": "<the release's bundle target sha256>", "percent": 10,
     "groups": ["canary"], "halted": false, "stages": [5, 25, 100],
     "previous": {"release": 6, "sha256": "..."}}

A device is *in* when its group matches (``groups`` empty: every device is eligible) and its
bucket -- ``sha256(device_id + "\\0" + release sha256)`` mapped into [0, 100) -- is below
``percent``. The bucket depends on the release digest, so each release samples a different
set of devices, and raising the percentage only adds devices (no device leaves a stage).

* no rollout file, or one for another release/digest: the channel's release goes to everyone;
* not in the rollout (or halted) and not running it: the device stays where it is
  (``status: not-in-rollout``), nothing is downloaded beyond metadata;
* running a release whose rollout is **halted**: the device rolls back to its previous slot
  (the digest is then rejected, never reinstalled); with no previous slot (a first install) it
  keeps serving and says so (``status: halted-no-fallback``).

A device on trial (``pending``) is refused by the updater before the rollout is read: it rolls
back through its trial (attempts, unhealthy windows) or once marked good, at its next poll.

The device's rollout identity (``device_id`` and ``groups``) lives in ``rollout-id.json`` in
the device root; a random id is created (durably) on first use, and again (with a warning)
when the file is unreadable, so a damaged identity never locks the device out of updates.
"""
from __future__ import annotations

import hashlib
import json
import math
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

from ..atomic import atomic_write
from .core import _name
from .errors import SlotError, UpdateRefused

__all__ = ["RolloutSpec", "rollout_target_path", "parse_rollout", "bucket", "in_rollout", "rollout_identity",
           "set_rollout_identity", "gate", "IDENTITY_FILE"]

IDENTITY_FILE = "rollout-id.json"


def rollout_target_path(board: str, model: str) -> str:
    return f"rollouts/{_name('board', board)}/{_name('model', model)}.json"


@dataclass(frozen=True)
class RolloutSpec:
    release: int
    sha256: str
    percent: float
    groups: Tuple[str, ...] = ()
    halted: bool = False
    stages: Tuple[float, ...] = ()
    previous: Optional[Dict[str, Any]] = None

    def to_json(self) -> Dict[str, Any]:
        return {"release": self.release, "sha256": self.sha256, "percent": self.percent, "groups": list(self.groups),
                "halted": self.halted, "stages": list(self.stages), "previous": self.previous}


def _pct(what: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 <= v <= 100:
        raise UpdateRefused("rollout", f"{what} must be a number in [0, 100], got {v!r}")
    return float(v)


def parse_rollout(data: bytes) -> RolloutSpec:
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UpdateRefused("rollout", f"rollout file is not JSON: {exc}") from None
    need = {"release", "sha256", "percent"}
    if not isinstance(obj, dict) or need - set(obj):
        raise UpdateRefused("rollout", f"rollout file needs keys {sorted(need)}, got {str(obj)[:120]}")
    extra = set(obj) - need - {"groups", "halted", "stages", "previous"}
    if extra:
        raise UpdateRefused("rollout", f"rollout file has unknown keys {sorted(extra)}")
    rel = obj["release"]
    if isinstance(rel, bool) or not isinstance(rel, int):
        raise UpdateRefused("rollout", f"rollout.release must be an integer, got {rel!r}")
    sha = obj["sha256"]
    if not isinstance(sha, str) or len(sha) != 64 or set(sha) - set("0123456789abcdef"):
        raise UpdateRefused("rollout", f"rollout.sha256 must be a sha256 hex digest, got {sha!r}")
    groups = obj.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) and g for g in groups):
        raise UpdateRefused("rollout", f"rollout.groups must be a list of names, got {groups!r}")
    halted = obj.get("halted", False)
    if not isinstance(halted, bool):
        raise UpdateRefused("rollout", f"rollout.halted must be true or false, got {halted!r}")
    stages = obj.get("stages") or []
    if not isinstance(stages, list):
        raise UpdateRefused("rollout", f"rollout.stages must be a list, got {stages!r}")
    prev = obj.get("previous")
    if prev is not None and not isinstance(prev, dict):
        raise UpdateRefused("rollout", f"rollout.previous must be an object or null, got {prev!r}")
    return RolloutSpec(release=rel, sha256=sha, percent=_pct("rollout.percent", obj["percent"]), groups=tuple(groups),
                       halted=halted, stages=tuple(_pct("rollout.stages[]", s) for s in stages), previous=prev)


def bucket(device_id: str, release_sha256: str) -> float:
    """This device's position in [0, 100) for this release (uniform over device ids)."""
    h = hashlib.sha256(f"{device_id}\0{release_sha256}".encode("utf-8")).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64 * 100.0


def in_rollout(spec: RolloutSpec, device_id: str, groups: Sequence[str] = ()) -> bool:
    if spec.halted:
        return False
    if spec.groups and not set(spec.groups) & set(groups):
        return False
    return bucket(device_id, spec.sha256) < spec.percent


def rollout_identity(root: Path) -> Tuple[str, Tuple[str, ...]]:
    """(device_id, groups) of the device at ``root``; a random id is created on first use."""
    path = Path(root) / IDENTITY_FILE
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
        return str(obj["device_id"]), tuple(obj.get("groups") or ())
    except FileNotFoundError:
        device_id = uuid.uuid4().hex
        set_rollout_identity(root, device_id)
        return device_id, ()
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # a torn or garbled identity must not lock the device out of updates: start a new one, loudly
        device_id = uuid.uuid4().hex
        warnings.warn(f"{path} was unreadable ({exc}); this device now has the new rollout id {device_id}",
                      RuntimeWarning, stacklevel=2)
        set_rollout_identity(root, device_id)
        return device_id, ()


def set_rollout_identity(root: Path, device_id: str, groups: Sequence[str] = ()) -> None:
    if not isinstance(device_id, str) or not device_id:
        raise ValueError(f"device_id must be a non-empty string, got {device_id!r}")
    atomic_write(Path(root) / IDENTITY_FILE,
                 json.dumps({"device_id": device_id, "groups": list(groups)}, indent=2) + "\n", durable=True)


def gate(updater: Any, up: Any, number: int, path: str, state: Dict[str, Any], link: Optional[str]) -> Optional[Dict[str, Any]]:
    """Called by ``OtaUpdater.update`` once the channel named release ``number`` (target ``path``).
    Returns None to go on with the normal update, or the outcome record to return instead."""
    from . import slots

    rpath = rollout_target_path(updater.device.board, updater.device.model)
    if updater._guard(f"looking up target {rpath!r}", up.get_targetinfo, rpath) is None:
        return None  # no staged rollout: the channel's release goes to every device
    target = updater._guard(f"looking up target {path!r}", up.get_targetinfo, path)
    if target is None:
        return None  # the normal path refuses it
    _, data = updater._download(up, rpath, "rollout.json")
    spec = parse_rollout(data)
    if spec.release != number or spec.sha256 != target.hashes.get("sha256"):
        return None  # a rollout of another release: not about this one
    device_id, groups = rollout_identity(updater.root)
    b = bucket(device_id, spec.sha256)
    info = {"percent": spec.percent, "halted": spec.halted, "bucket": round(b, 4), "device_id": device_id}
    current = (state.get("slots") or {}).get(link or "", {}) if link else {}
    if current.get("sha256") == spec.sha256:
        if spec.halted:
            try:
                res = slots.rollback(updater.root, f"rollout of release {number} halted")
            except SlotError as exc:  # a first install: nothing verified to go back to
                return {"status": "halted-no-fallback", "release": current.get("release"), "slot": link,
                        "bytes": updater.fetcher.bytes, "rollout": info, "detail": str(exc)}
            after = slots.read_state(updater.root)
            return {"status": "rolled-back", "release": (after.get("slots") or {}).get(res.slot, {}).get("release"),
                    "slot": res.slot, "bytes": updater.fetcher.bytes, "rollout": info}
        return None  # running it: the normal path says up to date
    if not in_rollout(spec, device_id, groups):
        import shutil

        shutil.rmtree(updater.root / "staging", ignore_errors=True)
        return {"status": "not-in-rollout", "release": current.get("release"), "slot": link,
                "bytes": updater.fetcher.bytes, "rollout": info}
    return None
