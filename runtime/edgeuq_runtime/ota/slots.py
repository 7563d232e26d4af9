"""A/B slots on the device: files written with fsync, an atomic symlink flip, a pending
record with attempts left, mark-good, rollback, and the bundle the runtime must load.

Layout under the device root::

    slots/a/  slots/b/      two complete bundles (one current, one previous)
    current -> slots/a      the committed slot (an atomic symlink flip switches it)
    state.json              slot descriptions, version floor, pending record, rejected releases
    staging/                downloads in progress (always discarded at boot)
    downloads/<sha256>.part a bundle download cut off by a transport error, continued by the next
                            run for the same signed target (any other file there is removed)
    update.lock             flock'ed by whoever changes the device (update, boot, rollback, mark-good)
    trust/roots/N.root.json every TUF root this device verified (written durably; the newest bootstraps)

Ordering makes every crash safe: a slot is written as ``slots/x.tmp`` (files and dirs
fsynced), verified, then renamed; the pending record is written *before* the flip (a
record whose flip never happened is stale and dropped at boot); a rollback marks the
release spent *before* flipping back. ``EDGEUQ_OTA_CRASH_AT=<point>`` makes the process
SIGKILL itself at that write point (used by the fault suite, never set in service);
``EDGEUQ_OTA_CRASH_LOG=<file>`` appends the name of every point passed.

Local corruption is repaired, never a traceback: a truncated or garbage ``state.json`` is
rebuilt from the record kept in each verified slot (``slots/x/.ota-release.json``), a
``current`` that is not a symlink to a slot is re-pointed at the best verified slot, stray
files where ``staging`` or ``slots/x.tmp`` belong are removed.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from ..bundle import load_bundle
from ..errors import RuntimeUQError
from .core import choose_slot, decide_boot, normalize_state, rebuild_state
from .errors import OtaError, SlotError, UpdateBusy

__all__ = ["SLOTS", "Layout", "crashpoint", "fsync_dir", "write_file_durable", "read_state", "write_state",
           "link_slot", "cleanup", "write_slot", "commit", "boot", "current_bundle", "record_window", "mark_good",
           "rollback", "status", "BootResult", "update_lock", "repair", "persist_file", "RECORD", "remove_path",
           "begin_slot", "write_slot_file", "finish_slot", "inactive_slot"]

SLOTS = ("a", "b")
STATE_VERSION = 1
RECORD = ".ota-release.json"   # per-slot record (release, digests, good/rejected), for state repair
LOCK = "update.lock"
DOWNLOADS = "downloads"


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

    @property
    def lock(self) -> Path:
        return self.root / LOCK


_HELD = threading.local()


@contextlib.contextmanager
def update_lock(root: Path, wait_s: float = 0.0, what: str = "an update"):
    """Exclusive, crash-safe device lock (``fcntl.flock`` on ``update.lock``): released by the
    kernel when the holder dies, re-entrant within one thread. Waits up to ``wait_s`` seconds,
    then raises :class:`UpdateBusy` ("another update is running")."""
    import fcntl

    root = Path(root)
    key = str(root.resolve())
    held = getattr(_HELD, "roots", None)
    if held is None:
        held = _HELD.roots = {}
    if held.get(key):
        held[key] += 1
        try:
            yield
        finally:
            held[key] -= 1
        return
    if not root.is_dir():
        raise SlotError(f"no device root {str(root)!r} (nothing installed)")
    lock_path = Layout(root).lock
    if lock_path.is_dir() and not lock_path.is_symlink():
        shutil.rmtree(lock_path)
    fd = os.open(str(lock_path), os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        deadline = time.monotonic() + max(0.0, float(wait_s))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise UpdateBusy(f"another update is running on {str(root)!r} (its lock {LOCK} is held); "
                                     f"{what} was not started, nothing changed") from None
                time.sleep(0.05)
        held[key] = 1
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            yield
        finally:
            held.pop(key, None)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def remove_path(path: Path) -> None:
    """Remove a file, symlink or directory tree (whatever an interruption left there)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


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


def persist_file(path: Path, data: bytes, point: str) -> None:
    """Durable replace: temp file written and fsynced, renamed over ``path``, directory fsynced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if os.path.lexists(tmp):
        remove_path(tmp)
    write_file_durable(tmp, data, point)
    os.replace(tmp, path)
    crashpoint(f"{point}.replaced")
    fsync_dir(path.parent)


def _default_state() -> Dict[str, Any]:
    return {"state_version": STATE_VERSION, "slots": {}, "good": None, "floor": 0, "pending": None,
            "rejected": [], "history": []}


def _slot_record(root: Path, slot: str) -> Optional[Dict[str, Any]]:
    """The record kept next to a slot's bundle, or None when the slot does not verify."""
    if not _verified(root, slot):
        return None
    try:
        rec = json.loads((Layout(root).slot(slot) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        rec = {}
    return rec if isinstance(rec, dict) else {}


def load_state(root: Path) -> Tuple[Dict[str, Any], List[str]]:
    """The device state and the repairs it needed (empty when ``state.json`` was sound).
    A truncated or garbage file is rebuilt from the verified slots' records (in memory; the
    callers that change the device persist it)."""
    lay = Layout(Path(root))
    try:
        raw = lay.state.read_bytes()
    except FileNotFoundError:
        if any(_verified(lay.root, s) for s in SLOTS):
            obj = None  # slots without a state: rebuild
        else:
            return _default_state(), []
    except IsADirectoryError:
        obj = None
    except OSError as exc:
        raise SlotError(f"device state {lay.state} is unreadable: {exc}") from None
    else:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            obj = None
    state, problems = normalize_state(obj, STATE_VERSION) if obj is not None else (None, ["state.json is missing "
                                                                                       "or not JSON"])
    if state is None:
        records = {s: _slot_record(lay.root, s) for s in SLOTS}
        state = rebuild_state(records, STATE_VERSION)
        return state, [f"state.json rebuilt from the verified slots ({problems[0]})"]
    return state, problems


def read_state(root: Path) -> Dict[str, Any]:
    return load_state(root)[0]


def write_state(root: Path, state: Mapping[str, Any], point: str) -> None:
    """Atomic replace: tmp written + fsynced, renamed, directory fsynced."""
    lay = Layout(Path(root))
    state = dict(state)
    state["history"] = list(state.get("history", []))[-20:]
    tmp = lay.root / "state.json.tmp"
    if os.path.lexists(tmp):
        remove_path(tmp)
    if lay.state.is_dir() and not lay.state.is_symlink():
        shutil.rmtree(lay.state)
    write_file_durable(tmp, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode(), f"{point}.state-tmp")
    os.replace(tmp, lay.state)
    crashpoint(f"{point}.state-replaced")
    fsync_dir(lay.root)
    crashpoint(f"{point}.state-dirsync")


def _link(root: Path) -> Tuple[Optional[str], Optional[str]]:
    """(slot ``current`` points to, problem): (None, None) before the first install."""
    cur = Layout(Path(root)).current
    if not os.path.lexists(cur):
        return None, None
    if not cur.is_symlink():
        return None, "'current' is not a symlink"
    target = os.readlink(cur)
    name = Path(target).name
    if Path(target).parent.name != "slots" or name not in SLOTS or Path(target).is_absolute():
        return None, f"'current' points outside the slots: {target!r}"
    if not Layout(Path(root)).slot(name).is_dir():
        return None, f"'current' points at a missing slot {name}"
    return name, None


def link_slot(root: Path) -> Optional[str]:
    """The slot ``current`` points to (None before the first install or when ``current`` is broken)."""
    return _link(root)[0]


def _flip(root: Path, slot: str, point: str) -> None:
    lay = Layout(Path(root))
    tmp = lay.root / "current.tmp"
    if os.path.lexists(tmp):
        remove_path(tmp)
    if lay.current.is_dir() and not lay.current.is_symlink():
        shutil.rmtree(lay.current)  # a directory cannot be replaced by a symlink
    os.symlink(f"slots/{slot}", tmp)
    crashpoint(f"{point}.symlink")
    os.replace(tmp, lay.current)
    crashpoint(f"{point}.replaced")
    fsync_dir(lay.root)
    crashpoint(f"{point}.dirsync")


def _unlink_current(root: Path, point: str) -> None:
    lay = Layout(Path(root))
    if os.path.lexists(lay.current):
        remove_path(lay.current)
    crashpoint(f"{point}.unlinked")
    fsync_dir(lay.root)


def cleanup(root: Path) -> None:
    """Remove everything an interrupted install can leave: staging, half-written slots, temp
    links, and anything that is not a slot directory where a slot belongs."""
    lay = Layout(Path(root))
    if os.path.lexists(lay.staging):
        remove_path(lay.staging)
    if lay.slots.is_symlink() or (os.path.lexists(lay.slots) and not lay.slots.is_dir()):
        remove_path(lay.slots)
    if lay.slots.is_dir():
        for p in lay.slots.iterdir():
            if p.name not in SLOTS or p.is_symlink() or not p.is_dir():
                remove_path(p)
    for name in ("current.tmp", "state.json.tmp"):
        p = lay.root / name
        if os.path.lexists(p):
            remove_path(p)
    downloads = lay.root / DOWNLOADS   # partial downloads are kept (the updater continues or removes them)
    if os.path.lexists(downloads) and (downloads.is_symlink() or not downloads.is_dir()):
        remove_path(downloads)


def inactive_slot(root: Path) -> str:
    cur = link_slot(root)
    return "a" if cur in (None, "b") else "b"


def begin_slot(root: Path) -> Tuple[str, Path]:
    """Start writing the inactive slot: a fresh, empty ``slots/x.tmp``. Returns (slot, tmp dir).
    Fill it with :func:`write_slot_file`, then :func:`finish_slot` (or remove ``tmp`` on refusal)."""
    lay = Layout(Path(root))
    slot = inactive_slot(root)
    if os.path.lexists(lay.slots) and (lay.slots.is_symlink() or not lay.slots.is_dir()):
        remove_path(lay.slots)
    lay.slots.mkdir(parents=True, exist_ok=True)
    tmp = lay.slots / f"{slot}.tmp"
    if os.path.lexists(tmp):
        remove_path(tmp)
    tmp.mkdir()
    crashpoint("slot.mkdir")
    return slot, tmp


def write_slot_file(tmp: Path, name: str, chunks: Iterable[bytes], dirs: set) -> str:
    """Write one bundle file into a slot being built, chunk by chunk (bounded memory), fsynced;
    returns the sha256 of the bytes written. ``dirs`` collects the directories to fsync."""
    dest = Path(tmp) / name
    if dest.parent not in dirs:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise OtaError(f"bundle file {name!r} needs a directory where another file is") from None
        p = dest.parent
        while p not in dirs and p != Path(tmp).parent:
            dirs.add(p)
            p = p.parent
    digest = hashlib.sha256()
    point = f"slot.file[{name}]"
    with open(dest, "wb") as fh:
        for chunk in chunks:
            fh.write(chunk)
            digest.update(chunk)
        fh.flush()
        crashpoint(f"{point}.written")
        os.fsync(fh.fileno())
    crashpoint(f"{point}.fsynced")
    return digest.hexdigest()


def finish_slot(root: Path, slot: str, tmp: Path, dirs: set, info: Optional[Mapping[str, Any]] = None) -> str:
    """Seal a slot written into ``tmp``: the record file, every directory fsynced, the bundle
    verified with its own sha256 list, then the old inactive slot retired and ``tmp`` renamed
    into place. ``tmp`` is removed when it does not verify."""
    lay = Layout(Path(root))
    old, final = lay.slots / f"{slot}.old", lay.slot(slot)
    if info is not None:
        write_file_durable(Path(tmp) / RECORD, (json.dumps(dict(info), sort_keys=True) + "\n").encode(),
                           f"slot.file[{RECORD}]")
    for d in sorted(set(dirs) | {Path(tmp)}, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(d)
    crashpoint("slot.dirsync")
    try:
        load_bundle(tmp, verify=True)
    except RuntimeUQError as exc:
        remove_path(tmp)
        raise OtaError(f"slot {slot} failed verification after writing: {exc}") from None
    if os.path.lexists(final):
        if os.path.lexists(old):
            remove_path(old)
        os.replace(final, old)
        crashpoint("slot.retired")
        remove_path(old)
        crashpoint("slot.retired-removed")
    os.replace(tmp, final)
    crashpoint("slot.renamed")
    fsync_dir(lay.slots)
    crashpoint("slot.slots-dirsync")
    return slot


def write_slot(root: Path, files: Mapping[str, bytes], info: Optional[Mapping[str, Any]] = None) -> str:
    """Write ``files`` (name -> bytes, a verified bundle) as the inactive slot; return its name.

    ``slots/x.tmp`` first, every file and directory fsynced, verified with the bundle's own
    sha256 list, then the old inactive slot is retired and ``x.tmp`` renamed into place.
    ``info`` (release, digests) is kept in the slot as ``.ota-release.json`` for state repair.
    (The updater streams an archive into the slot with the same three steps: begin_slot,
    write_slot_file, finish_slot.)
    """
    slot, tmp = begin_slot(root)
    dirs: set = {tmp}
    try:
        for name in sorted(files):
            write_slot_file(tmp, name, (files[name],), dirs)
    except OtaError:
        remove_path(tmp)
        raise
    return finish_slot(root, slot, tmp, dirs, info)


def _update_record(root: Path, slot: Optional[str], point: str, **flags: Any) -> None:
    """Set flags (good, rejected) in a slot's record, durably (best effort on a broken slot)."""
    if slot not in SLOTS or not Layout(Path(root)).slot(slot).is_dir():
        return
    path = Layout(Path(root)).slot(slot) / RECORD
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        rec = rec if isinstance(rec, dict) else {}
    except (OSError, ValueError):
        rec = {}
    rec.update(flags)
    persist_file(path, (json.dumps(rec, sort_keys=True) + "\n").encode(), point)


def _event(state: Dict[str, Any], **kw: Any) -> None:
    state.setdefault("history", []).append(kw)


#: Seconds boot / rollback / mark-good wait for a running update before giving up.
LOCK_WAIT_S = 10.0
#: Seconds a served window waits to be counted before it is skipped (serving never blocks).
SERVICE_LOCK_WAIT_S = 0.5


def commit(root: Path, slot: str, info: Mapping[str, Any], attempts: int, healthy_needed: int) -> None:
    """Record the pending trial of ``slot``, then flip ``current`` to it."""
    state = read_state(root)
    previous = link_slot(root)
    if previous == slot:
        previous = None
    state["slots"][slot] = dict(info)
    state["pending"] = {"slot": slot, "previous": previous, "release": info.get("release"),
                        "attempts_left": int(attempts), "healthy": 0, "healthy_needed": int(healthy_needed)}
    _event(state, event="commit", slot=slot, release=info.get("release"))
    write_state(root, state, "commit.pending")
    _flip(root, slot, "commit.flip")


def _digest(root: Path, slot: Optional[str]) -> Optional[str]:
    """sha256 of the slot's manifest.json when the slot verifies, else None."""
    if slot not in SLOTS:
        return None
    try:
        return load_bundle(Layout(Path(root)).slot(slot), verify=True).digest
    except (RuntimeUQError, OSError):
        return None


def _verified(root: Path, slot: Optional[str]) -> bool:
    return _digest(root, slot) is not None


def _usable(root: Path, state: Mapping[str, Any], slot: Optional[str]) -> bool:
    """Verifies and is not a rejected release."""
    d = _digest(root, slot)
    if d is None:
        return False
    rejected = set(state.get("rejected") or ())
    return d not in rejected and ((state.get("slots") or {}).get(slot) or {}).get("sha256") not in rejected


def _fallbacks(state: Mapping[str, Any], first: Optional[str]) -> List[str]:
    order: List[Optional[str]] = [first]
    pending = state.get("pending") or {}
    order += [pending.get("previous"), state.get("good")] + list(SLOTS)
    out: List[str] = []
    for s in order:
        if s in SLOTS and s not in out:
            out.append(s)
    return out


def _has_fallback(root: Path, state: Mapping[str, Any], link: Optional[str]) -> bool:
    return any(_usable(root, state, s) for s in SLOTS if s != link)


def current_bundle(root: Path) -> Path:
    """The bundle directory the runtime must load (read-only): the committed slot if it is
    complete and verifies, else the previous one (after a failed trial or corruption)."""
    root = Path(root)
    state = read_state(root)
    link, problem = _link(root)
    if problem:
        chosen = choose_slot(state, {s: _digest(root, s) for s in SLOTS})
        if chosen is not None:
            return Layout(root).slot(chosen)
        raise SlotError(f"no slot under {str(root)!r} holds a complete, verified bundle ({problem})")
    if link is None:
        raise SlotError(f"no model installed under {str(root)!r} (run update)")
    decision = decide_boot(state, link)
    first = decision.slot
    if decision.action == "rollback" and not _usable(root, state, first):
        first = link  # no fallback: the trial bundle keeps serving
    for slot in _fallbacks(state, first):
        if slot == link and decision.action != "rollback" and _verified(root, slot):
            return Layout(root).slot(slot)
        if _usable(root, state, slot):
            return Layout(root).slot(slot)
    raise SlotError(f"no slot under {str(root)!r} holds a complete, verified bundle")


def repair(root: Path) -> List[str]:
    """(Caller holds the lock.) Discard interrupted work, rebuild a corrupt state from the
    verified slots, re-point a broken ``current``. Returns what was repaired, in words."""
    root = Path(root)
    cleanup(root)
    state, problems = load_state(root)
    done = list(problems)
    link, problem = _link(root)
    if problem:
        chosen = choose_slot(state, {s: _digest(root, s) for s in SLOTS})
        if state.get("pending") and state["pending"].get("slot") != chosen:
            state["pending"] = None
        if chosen is not None:
            _flip(root, chosen, "repair.flip")
            done.append(f"{problem}; now points at verified slot {chosen}")
        else:
            _unlink_current(root, "repair.unlink")
            done.append(f"{problem}; no verified slot: removed (no model installed)")
    if done:
        _event(state, event="repair", what=done[:4])
        write_state(root, state, "repair")
    return done


@dataclass(frozen=True)
class BootResult:
    bundle: Path
    slot: str
    action: str
    attempts_left: Optional[int]


def boot(root: Path) -> BootResult:
    """Start-up: discard interrupted work, repair local corruption, count a trial boot, roll
    back when attempts are spent or the current slot does not verify; return the bundle to load.

    While another process holds the update lock (an update is running), nothing is changed
    and the current bundle is returned with action ``busy``."""
    root = Path(root)
    try:
        with update_lock(root, LOCK_WAIT_S, "boot"):
            return _boot(root)
    except UpdateBusy:
        bundle = current_bundle(root)
        return BootResult(bundle, bundle.name, "busy", None)


def _boot(root: Path) -> BootResult:
    repair(root)
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
        if _has_fallback(root, state, link) or not _verified(root, link):
            return _do_rollback(root, state, "trial attempts spent without being marked good", "boot")
        # a first install (nothing to fall back to): keep serving it, end the trial without
        # marking it good, so that the device accepts the next update
        _event(state, event="trial-ended-no-fallback", slot=link, release=state["pending"].get("release"))
        state["pending"] = None
        write_state(root, state, "boot.nofallback")
        return BootResult(Layout(root).slot(link), link, "no-fallback", 0)
    if link is None:
        raise SlotError(f"no model installed under {str(root)!r} (run update)")
    if not _verified(root, link):
        return _do_rollback(root, state, f"slot {link} does not verify", "boot")
    pending = state.get("pending")
    return BootResult(Layout(root).slot(link), link, d.action, pending["attempts_left"] if pending else None)


def _reject(root: Path, state: Dict[str, Any], slot: Optional[str], point: str) -> None:
    # one identity per rejected release: the signed archive sha256 when known, else the manifest digest
    d = (state.get("slots") or {}).get(slot or "", {}).get("sha256") or _digest(root, slot)
    if d and d not in state["rejected"]:
        state["rejected"].append(d)
    _update_record(root, slot, f"{point}.record", rejected=True, good=False)


def _do_rollback(root: Path, state: Dict[str, Any], reason: str, point: str) -> BootResult:
    link = link_slot(root)
    candidates = [s for s in _fallbacks(state, (state.get("pending") or {}).get("previous")) if s != link]
    target = next((s for s in candidates if _usable(root, state, s)), None)
    if target is None:
        other = [s for s in SLOTS if s != link and _verified(root, s)]
        if other:
            raise SlotError(f"cannot roll back ({reason}): slot {other[0]} holds a release this device rejected "
                            "before; nothing changed, and updates are accepted")
        if _verified(root, link):
            raise SlotError(f"cannot roll back ({reason}): no previous release on this device; keep this one "
                            "with `status --mark-good` or install a fix with `update` (accepted during a first "
                            "install's trial); nothing changed")
        raise SlotError(f"no slot under {str(root)!r} holds a complete, verified bundle")
    _reject(root, state, link, point)
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
    """Flip back to the other verified slot and never reinstall the release we leave. A
    slot holding a release rejected before is never re-activated."""
    root = Path(root)
    with update_lock(root, LOCK_WAIT_S, "rollback"):
        repair(root)
        return _do_rollback(root, read_state(root), reason, "manual")


def mark_good(root: Path) -> Dict[str, Any]:
    root = Path(root)
    with update_lock(root, LOCK_WAIT_S, "mark-good"):
        state = read_state(root)
        link = link_slot(root)
        pending = state.get("pending")
        if not pending or pending.get("slot") != link:
            return state
        release = int(pending.get("release") or 0)
        _update_record(root, link, "markgood.record", good=True)
        state["pending"] = None
        state["good"] = link
        state["floor"] = max(int(state.get("floor", 0)), release)
        _event(state, event="mark-good", slot=link, release=release)
        write_state(root, state, "markgood")
        return state


def _fail_without_fallback(root: Path, state: Dict[str, Any], reason: str) -> None:
    """A first install failed in service and nothing can take over: reject it and leave the
    device without a model, accepting the next update (instead of [pending] forever)."""
    link = link_slot(root)
    _reject(root, state, link, "service")
    state["pending"] = None
    if state.get("good") == link:
        state["good"] = None
    _event(state, event="no-model", slot=link, reason=reason)
    write_state(root, state, "service.nomodel")
    _unlink_current(root, "service.nomodel")


def record_window(root: Path, healthy: bool) -> str:
    """Report one window served by a pending release: N healthy ones mark it good; an
    unhealthy one (non-finite output, runtime error) rolls it back (or, on a first install
    with nothing to roll back to, leaves the device without a model: ``no-model``).
    Returns the status word (``busy``: an update holds the lock; the window is not counted)."""
    root = Path(root)
    state = read_state(root)
    pending = state.get("pending")
    if not pending or pending.get("slot") != link_slot(root):
        return "good"
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(update_lock(root, SERVICE_LOCK_WAIT_S, "recording a served window"))
        except UpdateBusy:
            # an update replacing this (first-install) trial is running: serving is never
            # blocked or failed by it; this window is not counted
            return "busy"
        return _record_window_locked(root, healthy)


def _record_window_locked(root: Path, healthy: bool) -> str:
    state = read_state(root)
    pending = state.get("pending")
    link = link_slot(root)
    if not pending or pending.get("slot") != link:
        return "good"
    if not healthy:
        if not _has_fallback(root, state, link):
            _fail_without_fallback(root, state, "unhealthy window in service")
            return "no-model"
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
    state, problems = load_state(root)
    link, problem = _link(root)
    out = {"root": str(root), "current": link, "floor": state.get("floor", 0), "good": state.get("good"),
           "pending": state.get("pending"), "rejected": len(state.get("rejected", [])), "slots": {},
           "needs_repair": problems + ([problem] if problem else [])}
    for s in SLOTS:
        info = {k: v for k, v in dict((state.get("slots") or {}).get(s, {})).items()}
        digest = _digest(root, s)
        info["verified"] = digest is not None
        if digest is not None:  # the runtime's bundle identity: sha256 of manifest.json
            info["bundle_digest"] = digest
            info["rejected"] = digest in set(state.get("rejected") or ()) or info.get("sha256") in set(
                state.get("rejected") or ())
        out["slots"][s] = info
    try:
        out["serving"] = str(current_bundle(root))
    except OtaError as exc:
        out["serving"] = None
        out["error"] = str(exc)
    return out
