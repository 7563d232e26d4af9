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

from .. import _checks as c
from .errors import UpdateRefused

__all__ = [
    "RUNTIME_ABI", "SUPPORTED_ABIS", "CUSTOM_KEY", "DeviceIdentity", "Release", "DeltaInfo",
    "bundle_target_path", "channel_target_path", "delta_target_path", "parse_channel",
    "check_release", "check_delta", "check_hashes", "check_archive_members", "check_bundle_files",
    "check_canaries", "CanaryReport", "BootDecision", "decide_boot", "sha256_bytes",
    "MAX_RELEASE_STEP", "contract_of", "check_contract", "compare_versions", "check_delta_header",
    "DELTA_MAGIC", "normalize_state", "rebuild_state", "choose_slot", "verify_root_chain",
]

#: Version of the bundle contract this runtime executes (manifest v1 + executors). A
#: release declares the ABI it was built for; the device refuses any ABI it does not list.
RUNTIME_ABI = 1
SUPPORTED_ABIS: FrozenSet[int] = frozenset({RUNTIME_ABI})
#: Key of the edgeuq block in a TUF target's ``custom`` metadata.
CUSTOM_KEY = "edgeuq"
#: A signed release number may exceed the version floor (or, before any release was marked
#: good, zero) by at most this much: a signed 2**62 must not raise the floor forever.
MAX_RELEASE_STEP = 1 << 16
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
    contract: Optional[Mapping[str, Any]] = None  # signed model/input contract (see contract_of)


@dataclass(frozen=True)
class DeltaInfo:
    path: str
    base_release: int
    base_sha256: str
    result_sha256: str
    length: int
    sha256: str


def _refused(message: str) -> UpdateRefused:
    return UpdateRefused("metadata", message)


def _int(what: str, value: Any) -> int:
    with c.translated(_refused):
        return c.integer(what, value, lo=None)


def _hex64(what: str, value: Any) -> str:
    with c.translated(_refused):
        return c.sha256_hex(what, value, lowercase_only=True)


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
    if release > floor + MAX_RELEASE_STEP:
        raise UpdateRefused("release-step", f"release {release} jumps more than {MAX_RELEASE_STEP} above the "
                            f"version floor {floor}; a release number that large would raise the floor for good")
    if path != bundle_target_path(device.board, device.model, release):
        raise UpdateRefused("metadata", f"target path {path!r} does not match its release {release}")
    sha = _hex64("sha256", hashes.get("sha256"))
    manifest_sha = _hex64("manifest_sha256", meta["manifest_sha256"])
    bad = set(rejected)
    if sha in bad or manifest_sha in bad:
        raise UpdateRefused("rejected", f"release {release} ({sha[:12]}...) was rolled back on this device before")
    version = meta["model_version"]
    if not isinstance(version, str) or not version:
        raise UpdateRefused("metadata", f"model_version must be a non-empty string, got {version!r}")
    return Release(path=path, release=release, board=meta["board"], model=meta["model"], model_version=version,
                   runtime_abi=abi, canary_sha256=_hex64("canary_sha256", meta["canary_sha256"]),
                   manifest_sha256=manifest_sha, length=_int("length", length), sha256=sha,
                   contract=_signed_contract(meta))


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
    declared = meta.get("result_length")
    if declared is not None and _int("delta.result_length", declared) != release.length:
        raise UpdateRefused("delta", f"delta {path!r} declares a result of {declared} bytes, the signed release "
                            f"has {release.length}")
    return DeltaInfo(path=path, base_release=_int("delta.base_release", meta.get("base_release")),
                     base_sha256=base_sha256, result_sha256=release.sha256, length=_int("length", length),
                     sha256=_hex64("sha256", hashes.get("sha256")))


def check_archive_members(members: Sequence[Tuple[str, str, int]], max_total: int) -> List[str]:
    """``members``: (name, kind, size) per tar entry; only plain files at safe relative paths.

    Linear time (a set of names and a set of parent directories), so 20,000 members cost
    milliseconds; a name that is also another member's directory (``x`` and ``x/y``) and
    any kind other than a plain, non-sparse file are refused; the declared sizes must fit
    ``max_total`` (the caller passes the signed archive length: an uncompressed tar cannot
    hold more file bytes than it has).
    """
    names: List[str] = []
    seen: set = set()
    parents: set = set()
    total = 0
    for name, kind, size in members:
        norm = posixpath.normpath(name) if isinstance(name, str) and name else ""
        if (kind != "file" or not name or name.startswith("/") or "\\" in name or norm != name
                or norm.startswith("..") or norm == "." or "\0" in name):
            raise UpdateRefused("archive", f"archive entry {str(name)[:200]!r} ({kind}) is not a plain file at a "
                                "safe relative path")
        if name in seen:
            raise UpdateRefused("archive", f"archive entry {name!r} appears twice")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise UpdateRefused("archive", f"archive entry {name!r} has a bad size {size!r}")
        total += size
        if total > max_total:
            raise UpdateRefused("archive", f"archive entries declare more than {max_total} bytes")
        seen.add(name)
        names.append(name)
        head = name
        while "/" in head:
            head = head.rsplit("/", 1)[0]
            if head in parents:
                break
            parents.add(head)
    clash = sorted(seen & parents)
    if clash:
        raise UpdateRefused("archive", f"archive entry {clash[0]!r} is both a file and a directory of another entry")
    if "manifest.json" not in seen:
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


# -- the model contract: signed metadata vs the bundle manifest vs the running bundle ------------
_CONTRACT_KEYS = ("model", "model_version", "manifest_version", "input", "classes")


def contract_of(manifest: Any) -> Dict[str, Any]:
    """The contract a bundle manifest declares (what a device application depends on):
    model name and version, manifest format version, input (length, dtype, vocab) and the
    number of classes. Integers and strings only (it is also signed as TUF custom metadata)."""
    inp = manifest.input
    spec: Dict[str, Any] = {"length": int(inp.length), "dtype": str(inp.dtype)}
    if getattr(inp, "vocab_size", None) is not None:
        spec["vocab_size"] = int(inp.vocab_size)
    return {"model": manifest.model_name, "model_version": manifest.model_version,
            "manifest_version": int(manifest.manifest_version), "input": spec,
            "classes": len(manifest.class_names)}


def _signed_contract(meta: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    if "input" not in meta and "manifest_version" not in meta and "classes" not in meta:
        return None
    return {k: meta.get(k) for k in _CONTRACT_KEYS}


def compare_versions(a: str, b: str) -> Optional[int]:
    """-1, 0, 1 for dotted numeric versions (``1.2`` == ``1.2.0``; a ``-suffix``/``+suffix``
    is ignored for ordering); None when either is not of that form."""
    def parse(v: Any) -> Optional[Tuple[int, ...]]:
        if not isinstance(v, str):
            return None
        core_part = v.split("+", 1)[0].split("-", 1)[0]
        parts = core_part.split(".")
        if not parts or not all(p.isdigit() and len(p) <= 18 for p in parts):
            return None
        nums = [int(p) for p in parts]
        while len(nums) > 1 and nums[-1] == 0:
            nums.pop()
        return tuple(nums)
    pa, pb = parse(a), parse(b)
    if pa is None or pb is None:
        return None
    return (pa > pb) - (pa < pb)


def check_contract(signed: Optional[Mapping[str, Any]], bundle: Mapping[str, Any],
                   running: Optional[Mapping[str, Any]], device: DeviceIdentity) -> None:
    """Before any slot is written: the bundle's manifest must say exactly what the signed
    metadata says, be for this device's model, and keep the running bundle's contract
    (same input and classes, model version not lower). ``running`` is None on a first install."""
    if signed is None:
        raise UpdateRefused("metadata", "signed target lacks the model contract (model_version, manifest_version, "
                            "input, classes); republish it with this edgeuq")
    for key in _CONTRACT_KEYS:
        if signed.get(key) != bundle.get(key):
            raise UpdateRefused("contract", f"bundle manifest {key} {bundle.get(key)!r} differs from the signed "
                                f"{key} {signed.get(key)!r}")
    if bundle["model"] != device.model:
        raise UpdateRefused("model", f"bundle is model {bundle['model']!r}, this device runs {device.model!r}")
    if running is None:
        return
    if bundle["model"] != running.get("model"):
        raise UpdateRefused("model", f"bundle is model {bundle['model']!r}, the running bundle is "
                            f"{running.get('model')!r}")
    for key in ("input", "classes"):
        if bundle[key] != running.get(key):
            raise UpdateRefused("input-contract", f"bundle {key} {bundle[key]!r} differs from the running bundle's "
                                f"{running.get(key)!r}; applications feed it the running contract (publish a "
                                "different model name for a new contract)")
    order = compare_versions(bundle["model_version"], running.get("model_version"))
    if order is None and bundle["model_version"] != running.get("model_version"):
        raise UpdateRefused("model-version", f"cannot order model version {bundle['model_version']!r} against "
                            f"the running {running.get('model_version')!r} (use dotted numbers)")
    if order is not None and order < 0:
        raise UpdateRefused("model-version", f"model version {bundle['model_version']} is older than the running "
                            f"{running.get('model_version')}")


# -- deltas: the output size is known before patching --------------------------------------------
DELTA_MAGIC = b"BSDIFF40"


def _offtin(b: bytes) -> int:
    y = int.from_bytes(b[:8], "little")
    return -(y & ~(1 << 63)) if y & (1 << 63) else y


def check_delta_header(patch: bytes, result_length: int, patch_length: int) -> Tuple[int, int, int]:
    """Parse a bsdiff4 header; the declared output length must be the signed result length
    and the block lengths must fit the patch. Returns (control, diff, output) lengths."""
    if len(patch) < 32 or patch[:8] != DELTA_MAGIC:
        raise UpdateRefused("delta", "delta is not a bsdiff4 patch (bad magic or too short)")
    control, diff, out = _offtin(patch[8:16]), _offtin(patch[16:24]), _offtin(patch[24:32])
    if out != result_length:
        raise UpdateRefused("delta", f"delta declares an output of {out} bytes, the signed release has "
                            f"{result_length}; not patching")
    if control < 0 or diff < 0 or 32 + control + diff > patch_length:
        raise UpdateRefused("delta", f"delta block lengths ({control}, {diff}) do not fit its {patch_length} bytes")
    return control, diff, out


# -- the persisted device state: validation and repair ---------------------------------------------
_SLOT_NAMES = ("a", "b")


def _is_hex64(v: Any) -> bool:
    return c.valid(c.sha256_hex, "", v, lowercase_only=True)


def _is_count(v: Any) -> bool:
    return c.valid(c.integer, "", v, lo=0)


def normalize_state(obj: Any, version: int) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """Validate a parsed ``state.json``. Returns (state, problems): a field that is garbage is
    reset to its safe value and named in ``problems``; None when the whole object is unusable
    (then :func:`rebuild_state` recreates it from the verified slots)."""
    if not isinstance(obj, dict) or obj.get("state_version") != version:
        return None, ["state is not a state object of this version"]
    problems: List[str] = []
    out: Dict[str, Any] = {"state_version": version}
    slots_ = obj.get("slots")
    if not isinstance(slots_, dict) or set(slots_) - set(_SLOT_NAMES) or \
            not all(isinstance(v, dict) for v in slots_.values()):
        return None, ["slot records are garbage"]
    out["slots"] = {k: dict(v) for k, v in slots_.items()}
    floor = obj.get("floor", 0)
    if not _is_count(floor):
        return None, [f"version floor is garbage ({floor!r})"]
    out["floor"] = floor
    good = obj.get("good")
    if good is not None and good not in _SLOT_NAMES:
        problems.append(f"good slot {good!r} is not a slot")
        good = None
    out["good"] = good
    rejected = obj.get("rejected", [])
    if not isinstance(rejected, list) or not all(_is_hex64(r) for r in rejected):
        problems.append("rejected list is garbage; rebuilt from the slot records")
        rejected = [r for r in (rejected if isinstance(rejected, list) else []) if _is_hex64(r)]
    out["rejected"] = rejected
    history = obj.get("history", [])
    out["history"] = history if isinstance(history, list) else []
    pending = obj.get("pending")
    if pending is not None:
        ok = (isinstance(pending, dict) and pending.get("slot") in _SLOT_NAMES
              and pending.get("previous") in (None,) + _SLOT_NAMES and pending.get("previous") != pending.get("slot")
              and _is_count(pending.get("attempts_left")) and _is_count(pending.get("healthy", 0))
              and _is_count(pending.get("healthy_needed", 1))
              and (pending.get("release") is None or _is_count(pending.get("release"))))
        if not ok:
            problems.append(f"trial record is garbage ({str(pending)[:80]}); dropped")
            pending = None
    out["pending"] = pending
    return out, problems


def rebuild_state(records: Mapping[str, Optional[Mapping[str, Any]]], version: int) -> Dict[str, Any]:
    """A state from the records kept next to each verified slot (``records[slot]`` is None for
    a slot that does not verify). The floor becomes the highest release still on the device
    that was marked good (conservative: a downgrade stays refused); rejected digests come back
    from the records that say so; no trial is pending (nothing unconfirmed is counted twice)."""
    state: Dict[str, Any] = {"state_version": version, "slots": {}, "good": None, "floor": 0, "pending": None,
                             "rejected": [], "history": [{"event": "state-rebuilt"}]}
    for slot in _SLOT_NAMES:
        rec = records.get(slot)
        if not isinstance(rec, Mapping):
            continue
        info = {k: rec[k] for k in ("release", "model_version", "sha256", "manifest_sha256", "target") if k in rec}
        state["slots"][slot] = info
        ident = rec.get("sha256") if _is_hex64(rec.get("sha256")) else rec.get("manifest_sha256")
        if rec.get("rejected") and _is_hex64(ident) and ident not in state["rejected"]:
            state["rejected"].append(ident)
        if rec.get("good") and _is_count(rec.get("release")) and not rec.get("rejected"):
            if rec["release"] >= state["floor"]:
                state["floor"], state["good"] = rec["release"], slot
    return state


def choose_slot(state: Mapping[str, Any], verified: Mapping[str, Optional[str]]) -> Optional[str]:
    """The slot to serve when ``current`` is missing or broken: ``verified[slot]`` is the slot's
    manifest digest (None when it does not verify). Prefer the good slot, then the highest
    release; never a rejected bundle."""
    rejected = set(state.get("rejected") or ())
    records = state.get("slots") or {}

    def usable(s: str) -> bool:
        d = verified.get(s)
        return d is not None and d not in rejected and (records.get(s) or {}).get("sha256") not in rejected

    if state.get("good") in _SLOT_NAMES and usable(state["good"]):
        return state["good"]
    cands = [s for s in _SLOT_NAMES if usable(s)]
    def rel(s: str) -> int:
        r = (records.get(s) or {}).get("release")
        return r if _is_count(r) else -1
    return max(cands, key=lambda s: (rel(s), s == "a"), default=None)


def verify_root_chain(trusted: Any, newer: Sequence[Any]) -> List[Any]:
    """Walk root versions ``trusted.version + 1 ...`` (tuf ``Metadata[Root]`` objects in order):
    each must be signed by a threshold of the previous root's keys and of its own, with the
    next version number. Returns the accepted prefix (stops at the first gap or failure)."""
    from tuf.api.exceptions import UnsignedMetadataError

    out = []
    cur = trusted
    for md in newer:
        if md.signed.version != cur.signed.version + 1:
            break
        try:
            cur.verify_delegate("root", md)
            md.verify_delegate("root", md)
        except UnsignedMetadataError:  # not a trusted successor: the chain stops here
            break
        out.append(md)
        cur = md
    return out
