"""The pure verification core of the updater: decisions from bytes and dicts, no IO.

Everything here takes values already in memory (TUF target info, custom metadata,
hashes, canary observations, the persisted slot state) and either returns a
decision or raises :class:`UpdateRefused` with a reason code. The IO layers
(:mod:`.updater`, :mod:`.slots`) call these functions and do nothing clever
themselves, so every rule is testable without disks or networks.
"""
from __future__ import annotations

import hashlib
import json
import math
import posixpath
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import UpdateRefused

__all__ = [
    "RUNTIME_ABI", "SUPPORTED_ABIS", "CUSTOM_KEY", "DeviceIdentity", "Release", "DeltaInfo",
    "bundle_target_path", "channel_target_path", "delta_target_path", "parse_channel",
    "check_release", "check_delta", "check_hashes", "check_archive_members", "check_bundle_files",
    "check_canaries", "CanaryReport", "BootDecision", "decide_boot", "sha256_bytes",
]

#: Version of the bundle contract this runtime executes (manifest v1 + executors). A
#: release declares the ABI it was built for; the device refuses any ABI it does not list.
RUNTIME_ABI = 1
SUPPORTED_ABIS: FrozenSet[int] = frozenset({RUNTIME_ABI})
#: Key of the edgeuq block in a TUF target's ``custom`` metadata.
CUSTOM_KEY = "edgeuq"
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or set(value) - _SAFE or value.startswith("."):
        raise ValueError(f"{what} must be a non-empty name of letters, digits, '.', '_', '-', got {value!r}")
    return value


def bundle_target_path(board: str, model: str, release: int) -> str:
    return f"bundles/{_name('board', board)}/{_name('model', model)}/r{int(release)}.tar"


def channel_target_path(board: str, model: str) -> str:
    return f"channels/{_name('board', board)}/{_name('model', model)}.json"


def delta_target_path(board: str, model: str, base: int, release: int) -> str:
    return f"deltas/{_name('board', board)}/{_name('model', model)}/r{int(base)}-r{int(release)}.bsdiff"


@dataclass(frozen=True)
class DeviceIdentity:
    """What this device is: its board, the model it runs, the runtime ABIs it executes."""

    board: str
    model: str
    abis: FrozenSet[int] = SUPPORTED_ABIS

    def __post_init__(self) -> None:
        _name("board", self.board)
        _name("model", self.model)


@dataclass(frozen=True)
class Release:
    """A full bundle target that passed every metadata rule."""

    path: str
    release: int
    board: str
    model: str
    model_version: str
    runtime_abi: int
    canary_sha256: str
    manifest_sha256: str
    length: int
    sha256: str


@dataclass(frozen=True)
class DeltaInfo:
    path: str
    base_release: int
    base_sha256: str
    result_sha256: str
    length: int
    sha256: str


def _int(what: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise UpdateRefused("metadata", f"{what} must be an integer, got {value!r}")
    return value


def _hex64(what: str, value: Any) -> str:
    if not isinstance(value, str) or len(value) != 64 or set(value) - set("0123456789abcdef"):
        raise UpdateRefused("metadata", f"{what} must be a lowercase sha256 hex digest, got {value!r}")
    return value


def parse_channel(data: bytes, device: DeviceIdentity) -> Tuple[int, str]:
    """The channel file (a signed target) names the newest release: ``{"release": N, "target": path}``."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise UpdateRefused("channel", f"channel file is not JSON: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"release", "target"}:
        raise UpdateRefused("channel", f"channel file must be an object with keys release, target; got {obj!r}"[:200])
    release = _int("channel.release", obj["release"])
    expected = bundle_target_path(device.board, device.model, release)
    if obj["target"] != expected:
        raise UpdateRefused("channel", f"channel target {obj['target']!r} is not this device's bundle path {expected!r}")
    return release, expected


def check_hashes(what: str, data_sha256: str, data_length: int, length: int, hashes: Mapping[str, str]) -> None:
    """Re-check downloaded bytes against the TUF target info (defence in depth, before any write)."""
    if data_length != length:
        raise UpdateRefused("target-hash", f"{what}: length {data_length} != signed length {length}")
    if hashes.get("sha256") != data_sha256:
        raise UpdateRefused("target-hash", f"{what}: sha256 {data_sha256[:12]}... != signed "
                            f"{str(hashes.get('sha256'))[:12]}...")


def check_release(path: str, length: int, hashes: Mapping[str, str], custom: Mapping[str, Any],
                  device: DeviceIdentity, floor: int, rejected: Iterable[str] = ()) -> Release:
    """Apply the device rules to a signed bundle target: board, model, ABI, version floor, blacklist."""
    meta = custom.get(CUSTOM_KEY) if isinstance(custom, Mapping) else None
    if not isinstance(meta, Mapping):
        raise UpdateRefused("metadata", f"target {path!r} has no {CUSTOM_KEY!r} custom metadata")
    need = {"board", "model", "model_version", "release", "runtime_abi", "canary_sha256", "manifest_sha256"}
    missing = sorted(need - set(meta))
    if missing:
        raise UpdateRefused("metadata", f"target {path!r} custom metadata lacks {missing}")
    if meta["board"] != device.board:
        raise UpdateRefused("board", f"release is for board {meta['board']!r}, this device is {device.board!r}")
    if meta["model"] != device.model:
        raise UpdateRefused("model", f"release is model {meta['model']!r}, this device runs {device.model!r}")
    abi = _int("runtime_abi", meta["runtime_abi"])
    if abi not in device.abis:
        raise UpdateRefused("abi", f"release needs runtime ABI {abi}, this runtime executes {sorted(device.abis)}")
    release = _int("release", meta["release"])
    if release <= floor:
        raise UpdateRefused("floor", f"release {release} is not above the version floor {floor} "
                            "(older or equal to a release already marked good)")
    if path != bundle_target_path(device.board, device.model, release):
        raise UpdateRefused("metadata", f"target path {path!r} does not match its release {release}")
    sha = _hex64("sha256", hashes.get("sha256"))
    if sha in set(rejected):
        raise UpdateRefused("rejected", f"release {release} ({sha[:12]}...) was rolled back on this device before")
    version = meta["model_version"]
    if not isinstance(version, str) or not version:
        raise UpdateRefused("metadata", f"model_version must be a non-empty string, got {version!r}")
    return Release(path=path, release=release, board=meta["board"], model=meta["model"], model_version=version,
                   runtime_abi=abi, canary_sha256=_hex64("canary_sha256", meta["canary_sha256"]),
                   manifest_sha256=_hex64("manifest_sha256", meta["manifest_sha256"]),
                   length=_int("length", length), sha256=sha)


def check_delta(path: str, length: int, hashes: Mapping[str, str], custom: Mapping[str, Any],
                base_sha256: Optional[str], release: Release) -> Optional[DeltaInfo]:
    """A delta is usable only if it patches exactly the archive we hold into exactly the signed release."""
    meta = custom.get(CUSTOM_KEY, {}).get("delta") if isinstance(custom, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    if base_sha256 is None or meta.get("base_sha256") != base_sha256:
        return None  # not for the archive this device has: use the full target
    if meta.get("result_sha256") != release.sha256:
        raise UpdateRefused("delta", f"delta {path!r} produces {str(meta.get('result_sha256'))[:12]}..., "
                            f"not the signed release {release.sha256[:12]}...")
    return DeltaInfo(path=path, base_release=_int("delta.base_release", meta.get("base_release")),
                     base_sha256=base_sha256, result_sha256=release.sha256, length=_int("length", length),
                     sha256=_hex64("sha256", hashes.get("sha256")))


def check_archive_members(members: Sequence[Tuple[str, str, int]], max_total: int) -> List[str]:
    """``members``: (name, kind, size) per tar entry; only plain files at safe relative paths."""
    names: List[str] = []
    total = 0
    for name, kind, size in members:
        norm = posixpath.normpath(name)
        if (kind != "file" or not name or name.startswith("/") or "\\" in name or norm != name
                or norm.startswith("..") or norm == "."):
            raise UpdateRefused("archive", f"archive entry {name!r} ({kind}) is not a plain file at a safe relative path")
        if name in names:
            raise UpdateRefused("archive", f"archive entry {name!r} appears twice")
        total += size
        if total > max_total:
            raise UpdateRefused("archive", f"archive expands beyond {max_total} bytes")
        names.append(name)
    if "manifest.json" not in names:
        raise UpdateRefused("archive", "archive has no manifest.json")
    return names


def check_bundle_files(names: Sequence[str], manifest_sha256: str, manifest_files: Mapping[str, str],
                       actual: Mapping[str, str], release: Release, canary_file: Optional[str]) -> None:
    """The bundle's own sha256 list must describe exactly the archive, and match the signed digests."""
    if manifest_sha256 != release.manifest_sha256:
        raise UpdateRefused("bundle-integrity", f"manifest.json sha256 {manifest_sha256[:12]}... != signed "
                            f"{release.manifest_sha256[:12]}...")
    extra = sorted(set(names) - set(manifest_files) - {"manifest.json"})
    missing = sorted(set(manifest_files) - set(names))
    if extra or missing:
        raise UpdateRefused("bundle-integrity", f"archive files do not match manifest.json: extra {extra}, missing {missing}")
    for name, expected in manifest_files.items():
        if actual.get(name) != expected:
            raise UpdateRefused("bundle-integrity", f"bundle file {name!r} sha256 {str(actual.get(name))[:12]}... != "
                                f"manifest {expected[:12]}...")
    if canary_file is None:
        raise UpdateRefused("canary-missing", "bundle carries no canaries section; this device only installs "
                            "bundles it can check on itself")
    if manifest_files.get(canary_file) != release.canary_sha256:
        raise UpdateRefused("canary-digest", f"canary file {canary_file!r} sha256 does not match the signed canary digest")


@dataclass(frozen=True)
class CanaryReport:
    windows: int
    class_ok: int
    mi_max_error: float
    latency_ms: float
    latency_budget_ms: float

    def to_json(self) -> Dict[str, Any]:
        return {"windows": self.windows, "class_ok": self.class_ok, "mi_max_error": self.mi_max_error,
                "latency_ms": self.latency_ms, "latency_budget_ms": self.latency_budget_ms}


def check_canaries(expected_class: Sequence[int], expected_mi: Sequence[float], mi_tolerance: float,
                   latency_budget_ms: float, observed_class: Sequence[int], observed_mi: Sequence[float],
                   latency_ms: float) -> CanaryReport:
    """The new model must reproduce every canary's class and mutual information, within the latency budget."""
    n = len(expected_class)
    if len(observed_class) != n or len(observed_mi) != n or len(expected_mi) != n or n == 0:
        raise UpdateRefused("canary-class", f"canary count mismatch: expected {n}, observed {len(observed_class)}")
    bad = [i for i in range(n) if int(observed_class[i]) != int(expected_class[i])]
    if bad:
        raise UpdateRefused("canary-class", f"{len(bad)}/{n} canary windows changed class (first: window {bad[0]}: "
                            f"expected {expected_class[bad[0]]}, got {observed_class[bad[0]]})")
    errs = [abs(float(o) - float(e)) for o, e in zip(observed_mi, expected_mi)]
    worst = max(errs) if all(math.isfinite(x) for x in errs) else float("nan")
    if not worst <= mi_tolerance:  # NaN-safe
        raise UpdateRefused("canary-mi", f"canary mutual information off by {worst:.4g} nats > tolerance {mi_tolerance:g}")
    if not latency_ms <= latency_budget_ms:
        raise UpdateRefused("canary-latency", f"canary latency {latency_ms:.3f} ms per window exceeds the budget "
                            f"{latency_budget_ms:g} ms on this device")
    return CanaryReport(windows=n, class_ok=n, mi_max_error=worst, latency_ms=latency_ms,
                        latency_budget_ms=latency_budget_ms)


@dataclass(frozen=True)
class BootDecision:
    """What to do at boot given the persisted state and where ``current`` points.

    ``action``: ``"run"`` (use ``slot``), ``"clear-stale"`` (a pending record whose flip never
    happened: drop it, run ``slot``), ``"count"`` (a trial boot of a pending release: decrement
    attempts, run ``slot``), ``"rollback"`` (attempts spent: flip to ``slot`` = previous).
    """

    action: str
    slot: Optional[str]
    attempts_left: int = 0


def decide_boot(state: Mapping[str, Any], link: Optional[str]) -> BootDecision:
    pending = state.get("pending")
    if not pending:
        return BootDecision("run", link)
    if pending.get("slot") != link:
        return BootDecision("clear-stale", link)
    left = int(pending.get("attempts_left", 0))
    if left <= 0:
        return BootDecision("rollback", pending.get("previous"))
    return BootDecision("count", link, left - 1)
