"""A crash-consistency harness for the device updater (ALICE / CrashMonkey style, in-process).

:class:`FsRecorder` wraps the Python file-system calls the updater (and python-tuf) use --
``open``/``io.open`` for writing, ``os.open`` with O_CREAT/O_TRUNC, ``os.fsync``, ``os.replace``,
``os.rename``, ``os.unlink``/``os.remove``, ``os.rmdir``, ``os.mkdir``, ``os.symlink`` -- while a
real operation runs on a real device directory. After each call that touches the device root
it records one *event*: the visible tree (name -> inode) and what a power cut would keep:

* file **data** survives only as of the last ``fsync`` of that file (a new file that was never
  fsynced is empty; a truncating open drops the old data);
* a directory's **entries** (create, rename, unlink, mkdir, symlink) survive only as of the last
  ``fsync`` of that directory.

Inodes are tracked by a virtual id (a new one at every creation), so an unlinked file whose
name survives in an unsynced directory still holds its old durable data, and a reused inode
number is not confused with the file it replaced.

:meth:`FsRecorder.crash_state` builds, for a cut after event *k*, a device tree:

* ``"synced"``: only what was made durable -- every unsynced directory operation is lost;
* ``"names"``: every directory operation reached the disk (a journal committed them) but file
  data that was not fsynced is lost (the classic zero-length-file-after-rename outcome);
* ``"reorder"``: the operations of one chosen directory reached the disk, those of every
  other directory did not (operations persisted out of order across directories).

The harness does not model reordering of data writes *within* one file, partial sector writes,
or devices that lie about fsync; and it only sees what goes through Python's ``os``/``io``
functions (native code writing files directly would be missed -- the updater has none).
"""
from __future__ import annotations

import builtins
import io
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["FsRecorder", "Event", "VARIANTS"]

VARIANTS = ("synced", "names")
_WRITE_MODES = set("wxa+")


@dataclass(frozen=True)
class Event:
    op: str
    tree: Dict[str, Tuple[int, str, Optional[str]]]   # relpath -> (vid, kind, link target)
    root_vid: int
    data: Dict[int, bytes]                             # vid -> durable file data
    children: Dict[int, Dict[str, int]]                # vid -> durable directory entries
    kinds: Dict[int, Tuple[str, Optional[str]]]        # vid -> (kind, link target)


class FsRecorder:
    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self._vid: Dict[Tuple[int, int], int] = {}
        self._next = 0
        self.kinds: Dict[int, Tuple[str, Optional[str]]] = {}
        self.data: Dict[int, bytes] = {}
        self.children: Dict[int, Dict[str, int]] = {}
        self.events: List[Event] = []
        self.touched: set = set()   # (kind, relative path) of every change a wrapped call made
        self._active = False
        self._real: Dict[str, Any] = {}
        # the initial tree is durable as it is
        tree = self._walk()
        for rel, (vid, kind, _) in tree.items():
            p = self.root / rel if rel else self.root
            if kind == "file":
                self.data[vid] = self._read(p)
            elif kind == "dir":
                self.children[vid] = self._listing(p)
        self._record("initial", force=True)

    # -- identity ---------------------------------------------------------------------------------
    def _new_vid(self, st: os.stat_result, kind: str, target: Optional[str] = None) -> int:
        self._next += 1
        self._vid[(st.st_dev, st.st_ino)] = self._next
        self.kinds[self._next] = (kind, target)
        return self._next

    def _vid_of(self, p: Path) -> int:
        st = os.lstat(p)
        key = (st.st_dev, st.st_ino)
        if key not in self._vid:
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
            return self._new_vid(st, kind, os.readlink(p) if kind == "link" else None)
        return self._vid[key]

    def _read(self, p: Path) -> bytes:
        with self._real.get("io.open", io.open)(p, "rb") as fh:
            return fh.read()

    def _listing(self, d: Path) -> Dict[str, int]:
        return {e.name: self._vid_of(Path(e.path)) for e in os.scandir(d)}

    def _walk(self) -> Dict[str, Tuple[int, str, Optional[str]]]:
        out = {"": (self._vid_of(self.root), "dir", None)}
        stack = [self.root]
        while stack:
            d = stack.pop()
            for e in os.scandir(d):
                p = Path(e.path)
                vid = self._vid_of(p)
                kind, target = self.kinds[vid]
                if kind == "link":
                    target = os.readlink(p)
                    self.kinds[vid] = (kind, target)
                out[str(p.relative_to(self.root))] = (vid, kind, target)
                if kind == "dir":
                    stack.append(p)
        return out

    def _touch(self, kind: str, *paths: Optional[Path]) -> None:
        for p in paths:
            if p is not None:
                self.touched.add((kind, str(p.relative_to(self.root))))

    def _under(self, path: Any, dir_fd: Optional[int] = None) -> Optional[Path]:
        if isinstance(path, int):
            return None
        p = Path(os.fsdecode(path))
        if dir_fd is not None and not p.is_absolute():
            p = Path(os.readlink(f"/proc/self/fd/{dir_fd}")) / p
        p = Path(os.path.abspath(p))
        try:
            p.relative_to(self.root)
        except ValueError:
            return None
        return p

    # -- events -----------------------------------------------------------------------------------
    def _record(self, op: str, force: bool = False) -> None:
        tree = self._walk()
        ev = Event(op=op, tree=tree, root_vid=tree[""][0], data=dict(self.data), children=dict(self.children),
                   kinds=dict(self.kinds))
        if not force and self.events:
            last = self.events[-1]
            if last.tree == ev.tree and last.data == ev.data and last.children == ev.children:
                return
        self.events.append(ev)

    def _created(self, p: Path, existed: bool) -> None:
        """``p`` was just created (a new inode, whatever number it reuses) or truncated."""
        st = os.lstat(p)
        if existed:
            self.data[self._vid_of(p)] = b""  # a truncating open: the old data may be gone
            return
        vid = self._new_vid(st, "dir" if stat.S_ISDIR(st.st_mode) else "file")
        if self.kinds[vid][0] == "dir":
            self.children[vid] = {}
        else:
            self.data[vid] = b""

    # -- wrappers ---------------------------------------------------------------------------------
    def _wrap_open(self, real: Callable) -> Callable:
        def opener(file: Any, mode: str = "r", *a: Any, **kw: Any):
            p = self._under(file) if self._active else None
            if p is None or "opener" in kw or not (set(mode) & _WRITE_MODES):  # an opener's os.open is seen
                return real(file, mode, *a, **kw)
            existed = os.path.lexists(p)
            fh = real(file, mode, *a, **kw)
            self._touch("open-write", p)
            if not existed or "w" in mode:
                self._created(p, existed)
                self._record(f"open({p.relative_to(self.root)}, {mode})")
            return fh
        return opener

    def install(self, monkeypatch: Any) -> "FsRecorder":
        r = self._real
        r.update({"io.open": io.open, "os.open": os.open, "os.fsync": os.fsync, "os.replace": os.replace,
                  "os.rename": os.rename, "os.unlink": os.unlink, "os.remove": os.remove, "os.rmdir": os.rmdir,
                  "os.mkdir": os.mkdir, "os.symlink": os.symlink})
        opener = self._wrap_open(r["io.open"])
        monkeypatch.setattr(builtins, "open", opener)
        monkeypatch.setattr(io, "open", opener)

        def os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: Optional[int] = None):
            p = self._under(path, dir_fd) if self._active else None
            existed = p is not None and os.path.lexists(p)
            fd = r["os.open"](path, flags, mode, dir_fd=dir_fd)
            if p is not None and flags & (os.O_CREAT | os.O_TRUNC | os.O_WRONLY | os.O_RDWR):
                self._touch("open-write", p)
            if p is not None and flags & (os.O_CREAT | os.O_TRUNC) and (not existed or flags & os.O_TRUNC):
                self._created(p, existed)
                self._record(f"os.open({p.relative_to(self.root)})")
            return fd

        def fsync(fd: Any) -> None:
            r["os.fsync"](fd)
            if not self._active:
                return
            num = fd if isinstance(fd, int) else fd.fileno()
            p = self._under(os.readlink(f"/proc/self/fd/{num}"))
            if p is None:
                return
            vid = self._vid_of(p)
            if self.kinds[vid][0] == "dir":
                self.children[vid] = self._listing(p)
            else:
                self.data[vid] = self._read(p)
            self._record(f"fsync({p.relative_to(self.root) if p != self.root else '.'})")

        def two(name: str) -> Callable:
            def fn(src: Any, dst: Any, *, src_dir_fd: Optional[int] = None, dst_dir_fd: Optional[int] = None) -> None:
                ps = self._under(src, src_dir_fd) if self._active else None
                pd = self._under(dst, dst_dir_fd) if self._active else None
                r[name](src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
                self._touch("rename", ps, pd)
                if ps is not None or pd is not None:
                    self._record(f"{name}({src} -> {dst})")
            return fn

        def one(name: str) -> Callable:
            def fn(path: Any, *a: Any, dir_fd: Optional[int] = None, **kw: Any) -> None:
                p = self._under(path, dir_fd) if self._active else None
                r[name](path, *a, dir_fd=dir_fd, **kw)
                self._touch({"os.unlink": "unlink", "os.remove": "unlink"}.get(name, name[3:]), p)
                if p is not None:
                    if name == "os.mkdir":
                        self._created(p, existed=False)
                    self._record(f"{name}({p.relative_to(self.root)})")
            return fn

        def symlink(src: Any, dst: Any, target_is_directory: bool = False, *, dir_fd: Optional[int] = None) -> None:
            r["os.symlink"](src, dst, target_is_directory, dir_fd=dir_fd)
            p = self._under(dst, dir_fd) if self._active else None
            self._touch("symlink", p)
            if p is not None:
                self._new_vid(os.lstat(p), "link", os.readlink(p))
                self._record(f"os.symlink({p.relative_to(self.root)} -> {src})")

        monkeypatch.setattr(os, "open", os_open)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "replace", two("os.replace"))
        monkeypatch.setattr(os, "rename", two("os.rename"))
        for name in ("unlink", "remove", "rmdir", "mkdir"):
            monkeypatch.setattr(os, name, one(f"os.{name}"))
        monkeypatch.setattr(os, "symlink", symlink)
        # shutil.rmtree picks its fd-based variant from these at import: keep it on os.* calls we see
        monkeypatch.setattr(shutil, "_use_fd_functions", False, raising=False)
        self._active = True
        return self

    def stop(self) -> None:
        self._active = False

    # -- crash states -------------------------------------------------------------------------------
    @staticmethod
    def _volatile_children(ev: Event) -> Dict[int, Dict[str, int]]:
        out: Dict[int, Dict[str, int]] = {}
        for rel, (vid, kind, _) in ev.tree.items():
            if kind == "dir":
                out.setdefault(vid, {})
            if rel:
                parent = rel.rpartition("/")[0]
                out.setdefault(ev.tree[parent][0], {})[rel.rpartition("/")[2]] = vid
        return out

    def unsynced_dirs(self, k: int) -> List[int]:
        """Directories (virtual ids) whose visible entries after event ``k`` differ from their durable ones."""
        ev = self.events[k]
        vol = self._volatile_children(ev)
        return sorted(v for v, entries in vol.items() if entries != ev.children.get(v, {}))

    def crash_state(self, k: int, variant: str, dest: Path, keep_dirs: Tuple[int, ...] = ()) -> Path:
        """Materialize the device as a power cut after event ``k`` leaves it. File data: as of each
        file's last fsync. Directory entries: ``"synced"``: as of each directory's last fsync;
        ``"names"``: as visible (every directory operation reached the disk); ``"reorder"``: as of
        the last fsync except the directories in ``keep_dirs``, whose visible entries reached the disk
        (a later operation persisted, an earlier one in another directory did not)."""
        if variant not in VARIANTS + ("reorder",):
            raise ValueError(f"variant must be one of {VARIANTS + ('reorder',)}, got {variant!r}")
        ev = self.events[k]
        dest = Path(dest)
        dest.mkdir(parents=True)
        real_open = self._real.get("io.open", io.open)
        vol = self._volatile_children(ev)
        keep = set(vol) if variant == "names" else set(keep_dirs) if variant == "reorder" else set()

        def build(vid: int, p: Path, depth: int) -> None:
            entries = vol.get(vid, {}) if vid in keep else ev.children.get(vid, {})
            for name, child in entries.items():
                kind, target = ev.kinds[child]
                q = p / name
                if kind == "dir":
                    q.mkdir()
                    if depth < 32:
                        build(child, q, depth + 1)
                elif kind == "link":
                    os.symlink(target, q)
                else:
                    with real_open(q, "wb") as fh:
                        fh.write(ev.data.get(child, b""))
        build(ev.root_vid, dest, 0)
        return dest
