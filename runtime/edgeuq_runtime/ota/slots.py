"""A/B slots on the device: files written with fsync, an atomic symlink flip, a pending
record with attempts left, mark-good, rollback, and the bundle the runtime must load.

Layout under the device root::

    slots/a/  slots/b/      two complete bundles (one current, one previous)
    current -> slots/a      the committed slot (an atomic symlink flip switches it)
    state.json              slot descriptions, version floor, pending record, rejected releases
    staging/                downloads in progress (always discarded at boot)

Ordering makes every crash safe: a slot is written as ``slots/x.tmp`` (files and dirs
fsynced), verified, then renamed; the pending record is written *before* the flip (a
record whose flip never happened is stale and dropped at boot); a rollback marks the
release spent *before* flipping back. ``EDGEUQ_OTA_CRASH_AT=<point>`` makes the process
SIGKILL itself at that write point (used by the fault suite, never set in service);
``EDGEUQ_OTA_CRASH_LOG=<file>`` appends the name of every point passed.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from ..bundle import load_bundle
from ..errors import RuntimeUQError
from .core import decide_boot
from .errors import OtaError, SlotError

__all__ = ["SLOTS", "Layout", "crashpoint", "fsync_dir", "write_file_durable", "read_state", "write_state",
           "link_slot", "cleanup", "write_slot", "commit", "boot", "current_bundle", "record_window", "mark_good",
           "rollback", "status", "BootResult"]

SLOTS = ("a", "b")
STATE_VERSION = 1


def crashpoint(point: str) -> None:
    """Fault-injection hook at a write point (see module docstring)."""
    log = os.environ.get("EDGEUQ_OTA_CRASH_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(point + "\n")
    if os.environ.get("EDGEUQ_OTA_CRASH_AT") == point:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def slots(self) -> Path:
        return self.root / "slots"

    def slot(self, name: str) -> Path:
        return self.slots / name

    @property
    def current(self) -> Path:
        return self.root / "current"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def staging(self) -> Path:
        return self.root / "staging"


def fsync_dir(path: Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durable(path: Path, data: bytes, point: str) -> None:
    """Write, crash point, fsync, crash point (the caller fsyncs the directory)."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        crashpoint(f"{point}.written")
        os.fsync(fh.fileno())
    crashpoint(f"{point}.fsynced")


def _default_state() -> Dict[str, Any]:
    return {"state_version": STATE_VERSION, "slots": {}, "good": None, "floor": 0, "pending": None,
            "rejected": [], "history": []}


def read_state(root: Path) -> Dict[str, Any]:
    lay = Layout(Path(root))
    try:
        state = json.loads(lay.state.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return _default_state()
    except (OSError, ValueError) as exc:  # cannot happen with atomic writes; never guess
        raise SlotError(f"device state {lay.state} is unreadable: {exc}") from None
    if not isinstance(state, dict) or state.get("state_version") != STATE_VERSION:
        raise SlotError(f"device state {lay.state} has an unknown format")
    return state


def write_state(root: Path, state: Mapping[str, Any], point: str) -> None:
    """Atomic replace: tmp written + fsynced, renamed, directory fsynced."""
    lay = Layout(Path(root))
    state = dict(state)
    state["history"] = list(state.get("history", []))[-20:]
    tmp = lay.root / "state.json.tmp"
    write_file_durable(tmp, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(), f"{point}.state-tmp")
    os.replace(tmp, lay.state)
    crashpoint(f"{point}.state-replaced")
    fsync_dir(lay.root)
    crashpoint(f"{point}.state-dirsync")


def link_slot(root: Path) -> Optional[str]:
    """The slot ``current`` points to (None before the first install)."""
    try:
        target = os.readlink(Layout(Path(root)).current)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SlotError(f"'current' is not a symlink: {exc}") from None
    name = Path(target).name
    if Path(target).parent.name != "slots" or name not in SLOTS:
        raise SlotError(f"'current' points outside the slots: {target!r}")
    return name


def _flip(root: Path, slot: str, point: str) -> None:
    lay = Layout(Path(root))
    tmp = lay.root / "current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(f"slots/{slot}", tmp)
    crashpoint(f"{point}.symlink")
    os.replace(tmp, lay.current)
    crashpoint(f"{point}.replaced")
    fsync_dir(lay.root)
    crashpoint(f"{point}.dirsync")


def cleanup(root: Path) -> None:
    """Remove everything an interrupted install can leave: staging, half-written slots, temp links."""
    lay = Layout(Path(root))
    shutil.rmtree(lay.staging, ignore_errors=True)
    if lay.slots.is_dir():
        for p in lay.slots.iterdir():
            if p.name not in SLOTS:
                shutil.rmtree(p, ignore_errors=True)
    for name in ("current.tmp", "state.json.tmp"):
        p = lay.root / name
        if p.is_symlink() or p.exists():
            p.unlink()


def inactive_slot(root: Path) -> str:
    cur = link_slot(root)
    return "a" if cur in (None, "b") else "b"


def write_slot(root: Path, files: Mapping[str, bytes]) -> str:
    """Write ``files`` (name -> bytes, a verified bundle) as the inactive slot; return its name.

    ``slots/x.tmp`` first, every file and directory fsynced, verified with the bundle's own
    sha256 list, then the old inactive slot is retired and ``x.tmp`` renamed into place.
    """
    lay = Layout(Path(root))
    slot = inactive_slot(root)
    lay.slots.mkdir(parents=True, exist_ok=True)
    tmp, old, final = lay.slots / f"{slot}.tmp", lay.slots / f"{slot}.old", lay.slot(slot)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    crashpoint("slot.mkdir")
    dirs = {tmp}
    for name in sorted(files):
        dest = tmp / name
        if dest.parent not in dirs:
            dest.parent.mkdir(parents=True, exist_ok=True)
            dirs.add(dest.parent)
        write_file_durable(dest, files[name], f"slot.file[{name}]")
    for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)
    crashpoint("slot.dirsync")
    try:
        load_bundle(tmp, verify=True)
    except RuntimeUQError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise OtaError(f"slot {slot} failed verification after writing: {exc}") from None
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        crashpoint("slot.retired")
        shutil.rmtree(old)
        crashpoint("slot.retired-removed")
    os.replace(tmp, final)
    crashpoint("slot.renamed")
    fsync_dir(lay.slots)
    crashpoint("slot.slots-dirsync")
    return slot


def _event(state: Dict[str, Any], **kw: Any) -> None:
    state.setdefault("history", []).append(kw)


def commit(root: Path, slot: str, info: Mapping[str, Any], attempts: int, healthy_needed: int) -> None:
    """Record the pending trial of ``slot``, then flip ``current`` to it."""
    state = read_state(root)
    previous = link_slot(root)
    state["slots"][slot] = dict(info)
    state["pending"] = {"slot": slot, "previous": previous, "release": info.get("release"),
                        "attempts_left": int(attempts), "healthy": 0, "healthy_needed": int(healthy_needed)}
    _event(state, event="commit", slot=slot, release=info.get("release"))
    write_state(root, state, "commit.pending")
    _flip(root, slot, "commit.flip")


def _verified(root: Path, slot: Optional[str]) -> bool:
    if slot not in SLOTS:
        return False
    try:
        load_bundle(Layout(Path(root)).slot(slot), verify=True)
        return True
    except RuntimeUQError:
        return False


def _fallbacks(state: Mapping[str, Any], first: Optional[str]) -> List[str]:
    order: List[Optional[str]] = [first]
    pending = state.get("pending") or {}
    order += [pending.get("previous"), state.get("good")] + list(SLOTS)
    out: List[str] = []
    for s in order:
        if s in SLOTS and s not in out:
            out.append(s)
    return out


def current_bundle(root: Path) -> Path:
    """The bundle directory the runtime must load (read-only): the committed slot if it is
    complete and verifies, else the previous one (after a failed trial or corruption)."""
    root = Path(root)
    state = read_state(root)
    decision = decide_boot(state, link_slot(root))
    for slot in _fallbacks(state, decision.slot):
        if _verified(root, slot):
            return Layout(root).slot(slot)
    raise SlotError(f"no slot under {str(root)!r} holds a complete, verified bundle")


@dataclass(frozen=True)
class BootResult:
    bundle: Path
    slot: str
    action: str
    attempts_left: Optional[int]


def boot(root: Path) -> BootResult:
    """Start-up: discard interrupted work, count a trial boot, roll back when attempts are
    spent or the current slot does not verify; return the bundle to load."""
    root = Path(root)
    cleanup(root)
    state = read_state(root)
    link = link_slot(root)
    d = decide_boot(state, link)
    if d.action == "clear-stale":
        _event(state, event="stale-pending-dropped", slot=state["pending"]["slot"])
        state["pending"] = None
        write_state(root, state, "boot.clear")
    elif d.action == "count":
        state["pending"]["attempts_left"] = d.attempts_left
        write_state(root, state, "boot.count")
    elif d.action == "rollback":
        try:
            return _do_rollback(root, state, "trial attempts spent without being marked good", "boot")
        except SlotError:
            if not _verified(root, link):
                raise
            # nothing verified to fall back to (a first install): keep serving the only bundle
            return BootResult(Layout(root).slot(link), link, "no-fallback", 0)
    if not _verified(root, link):
        if link is None and not any(_verified(root, s) for s in SLOTS):
            raise SlotError(f"no bundle installed under {str(root)!r}")
        return _do_rollback(root, state, f"slot {link} does not verify", "boot")
    pending = state.get("pending")
    return BootResult(Layout(root).slot(link), link, d.action, pending["attempts_left"] if pending else None)


def _do_rollback(root: Path, state: Dict[str, Any], reason: str, point: str) -> BootResult:
    link = link_slot(root)
    candidates = [s for s in _fallbacks(state, (state.get("pending") or {}).get("previous")) if s != link]
    target = next((s for s in candidates if _verified(root, s)), None)
    if target is None:
        if _verified(root, link):
            raise SlotError(f"cannot roll back ({reason}): no other slot holds a verified bundle")
        raise SlotError(f"no slot under {str(root)!r} holds a complete, verified bundle")
    bad = (state.get("slots") or {}).get(link or "", {}).get("sha256")
    if bad and bad not in state["rejected"]:
        state["rejected"].append(bad)
    if state.get("pending"):
        state["pending"]["attempts_left"] = 0  # spent before the flip: a crash now still rolls back
    _event(state, event="rollback", slot=link, to=target, reason=reason)
    write_state(root, state, f"{point}.rollback-mark")
    _flip(root, target, f"{point}.rollback-flip")
    state["pending"] = None
    if state.get("good") == link:
        state["good"] = target
    write_state(root, state, f"{point}.rollback-done")
    return BootResult(Layout(root).slot(target), target, "rollback", None)


def rollback(root: Path, reason: str = "operator request") -> BootResult:
    """Flip back to the other verified slot and never reinstall the release we leave."""
    root = Path(root)
    cleanup(root)
    return _do_rollback(root, read_state(root), reason, "manual")


def mark_good(root: Path) -> Dict[str, Any]:
    root = Path(root)
    state = read_state(root)
    link = link_slot(root)
    pending = state.get("pending")
    if not pending or pending.get("slot") != link:
        return state
    release = int(pending.get("release") or 0)
    state["pending"] = None
    state["good"] = link
    state["floor"] = max(int(state.get("floor", 0)), release)
    _event(state, event="mark-good", slot=link, release=release)
    write_state(root, state, "markgood")
    return state


def record_window(root: Path, healthy: bool) -> str:
    """Report one window served by a pending release: N healthy ones mark it good; an
    unhealthy one (non-finite output, runtime error) rolls it back. Returns the status word."""
    root = Path(root)
    state = read_state(root)
    pending = state.get("pending")
    if not pending or pending.get("slot") != link_slot(root):
        return "good"
    if not healthy:
        _do_rollback(root, state, "unhealthy window in service", "service")
        return "rolled-back"
    pending["healthy"] = int(pending.get("healthy", 0)) + 1
    if pending["healthy"] >= int(pending.get("healthy_needed", 1)):
        mark_good(root)
        return "good"
    write_state(root, state, "service.count")
    return "pending"


def status(root: Path) -> Dict[str, Any]:
    root = Path(root)
    state = read_state(root)
    link = link_slot(root)
    out = {"root": str(root), "current": link, "floor": state.get("floor", 0), "good": state.get("good"),
           "pending": state.get("pending"), "rejected": len(state.get("rejected", [])), "slots": {}}
    for s in SLOTS:
        info = dict((state.get("slots") or {}).get(s, {}))
        info["verified"] = _verified(root, s)
        if info["verified"]:  # the runtime's bundle identity: sha256 of manifest.json
            from ..bundle import sha256_file
            info["bundle_digest"] = sha256_file(Layout(root).slot(s) / "manifest.json")
        out["slots"][s] = info
    try:
        out["serving"] = str(current_bundle(root))
    except OtaError as exc:
        out["serving"] = None
        out["error"] = str(exc)
    return out
