"""The device updater: TUF refresh, channel, release rules, full or delta download, staging,
canaries, A/B slot write, commit. Any refusal leaves ``current`` and its slot untouched.

The bundle archive is streamed, never held in memory: it is downloaded into
``staging/bundle.tar`` (sha256 computed as the bytes arrive and compared with the signed
target; a dropped connection resumed with an HTTP Range request, see :mod:`.fetchers`), its
member headers checked against the signed length, then each member is copied in 1 MiB pieces
straight into the inactive slot's ``slots/x.tmp`` (hashed and fsynced on the way), checked
against the bundle's sha256 list, canary-run there, verified, and only then renamed into place
and flipped to. A bsdiff delta is used only for archives up to ``delta_max_bytes`` (patching
needs the base and the result in memory).

    upd = OtaUpdater("/var/lib/edgeuq")           # reads device.json + trust/root.json
    outcome = upd.update()                         # raises UpdateRefused with a reason

``provision(root, board=..., model=..., repo_url=..., root_json=...)`` writes the device
identity and the bootstrap root the device ships with (TUF 7 needs one).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

from ..bundle import load_bundle
from ..errors import RuntimeUQError
from ..manifest import Manifest
from . import archive, canaries, core, slots
from .errors import OtaError, UpdateRefused

__all__ = ["UpdateConfig", "OtaUpdater", "provision", "DEVICE_FILE", "ROOT_FILE", "TRUSTED_ROOTS",
           "bounded_patch", "trusted_roots"]

DEVICE_FILE = "device.json"
ROOT_FILE = "trust/root.json"
TRUSTED_ROOTS = "trust/roots"   # every root version this device verified, durably (newest bootstraps)


@dataclass(frozen=True)
class UpdateConfig:
    attempts: int = 3            # trial boots before an unconfirmed release is rolled back
    healthy_needed: int = 20     # healthy windows in service that mark a release good
    delta: bool = True           # use a signed bsdiff delta when one fits the installed archive
    threads: Optional[int] = 1   # backend threads for the canary run
    http_timeout: Optional[float] = None
    lock_wait_s: float = 0.0     # wait this long for another running update, then refuse [busy]
    max_resumes: int = 8         # resumes (HTTP Range or restart) of one download after dropped connections
    delta_max_bytes: int = 16 << 20  # deltas only for archives up to this size: patching holds the base,
    #                                  the patch and the result in memory (about 3x this at most)

    def __post_init__(self) -> None:
        for what in ("max_resumes", "delta_max_bytes"):
            v = getattr(self, what)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"UpdateConfig.{what} must be a non-negative integer, got {v!r}")


def provision(root: Path, board: str, model: str, repo_url: str, root_json: bytes) -> None:
    """Write the device identity and its bootstrap TUF root (durably)."""
    root = Path(root)
    core.DeviceIdentity(board, model)
    if "://" not in repo_url:  # the scheme is checked against the transports when a fetcher is made
        raise OtaError(f"repository URL needs a scheme (http://, https://, file://), got {repo_url!r}")
    try:
        from tuf.api.metadata import Metadata, Root
        Metadata[Root].from_bytes(root_json)
    except Exception as exc:
        raise OtaError(f"bootstrap root is not TUF root metadata: {exc}") from None
    (root / "trust").mkdir(parents=True, exist_ok=True)
    slots.write_file_durable(root / ROOT_FILE, root_json, "provision.root")
    cfg = json.dumps({"board": board, "model": model, "repo_url": repo_url.rstrip("/")}, indent=2) + "\n"
    slots.write_file_durable(root / DEVICE_FILE, cfg.encode(), "provision.device")
    slots.fsync_dir(root / "trust")
    slots.fsync_dir(root)


def trusted_roots(root: Path) -> Dict[int, bytes]:
    """Root versions this device verified and persisted (version -> bytes); unreadable ones are skipped."""
    out: Dict[int, bytes] = {}
    d = Path(root) / TRUSTED_ROOTS
    if d.is_dir():
        for p in d.glob("*.root.json"):
            head = p.name.split(".", 1)[0]
            if head.isdigit():
                try:
                    out[int(head)] = p.read_bytes()
                except OSError:
                    continue
    return out


def _bounded_bz2(data: bytes, limit: int, what: str) -> bytes:
    import bz2

    dec = bz2.BZ2Decompressor()
    try:
        out = dec.decompress(data, max_length=limit + 1)
    except (OSError, ValueError, EOFError) as exc:
        raise UpdateRefused("delta", f"delta {what} block is not bzip2: {exc}") from None
    if len(out) > limit:
        raise UpdateRefused("delta", f"delta {what} block expands beyond {limit} bytes; not patching")
    if not dec.eof:
        raise UpdateRefused("delta", f"delta {what} block is truncated")
    return out


def bounded_patch(base: bytes, patch: bytes, result_length: int) -> bytes:
    """bsdiff4 patching with every size known before memory is spent: the declared output
    must be the signed result length, and each bzip2 block is decompressed with a cap."""
    import bsdiff4.core

    n_control, n_diff, out = core.check_delta_header(patch, result_length, len(patch))
    control = _bounded_bz2(patch[32:32 + n_control], 24 * (out // 8 + 4096), "control")
    if len(control) % 24:
        raise UpdateRefused("delta", "delta control block is not a list of (add, copy, seek) triples")
    diff = _bounded_bz2(patch[32 + n_control:32 + n_control + n_diff], out, "diff")
    extra = _bounded_bz2(patch[32 + n_control + n_diff:], out, "extra")
    triples = [tuple(core._offtin(control[i + 8 * k:i + 8 * k + 8]) for k in range(3))  # noqa: SLF001
               for i in range(0, len(control), 24)]
    if sum(t[0] for t in triples) != len(diff) or sum(t[1] for t in triples) != len(extra) or \
            sum(t[0] + t[1] for t in triples) != out or any(t[0] < 0 or t[1] < 0 for t in triples):
        raise UpdateRefused("delta", "delta control triples do not add up to the declared output")
    try:
        data = bsdiff4.core.patch(base, out, control, diff, extra)
    except Exception as exc:  # the C core raises ValueError / SystemError on a bad patch
        raise UpdateRefused("delta", f"delta does not apply: {type(exc).__name__}: {exc}") from None
    if len(data) != out:
        raise UpdateRefused("delta", f"delta produced {len(data)} bytes, declared {out}")
    return data


def _tuf_reason(exc: BaseException) -> str:
    from tuf.api import exceptions as ex

    from .fetchers import RangeMismatchError

    for cls, reason in ((RangeMismatchError, "download-range"), (ex.ExpiredMetadataError, "expired"), (ex.UnsignedMetadataError, "signature"),
                        (ex.BadVersionNumberError, "rollback"), (ex.LengthOrHashMismatchError, "target-hash"),
                        (ex.DownloadLengthMismatchError, "download-length"), (ex.SlowRetrievalError, "download-slow"),
                        (ex.DownloadHTTPError, "download-http"), (ex.RepositoryError, "tuf"),
                        (ex.DownloadError, "download")):
        if isinstance(exc, cls):
            return reason
    return "download"


class OtaUpdater:
    def __init__(self, root: Path, fetcher: Any = None, config: UpdateConfig = UpdateConfig(),
                 repo_url: Optional[str] = None) -> None:
        self.root = Path(root)
        try:
            dev = json.loads((self.root / DEVICE_FILE).read_text(encoding="utf-8"))
            self.bootstrap = (self.root / ROOT_FILE).read_bytes()
        except (OSError, ValueError) as exc:
            raise OtaError(f"device {str(self.root)!r} is not provisioned ({DEVICE_FILE} + {ROOT_FILE}): {exc}") from None
        self.device = core.DeviceIdentity(dev["board"], dev["model"])
        self.repo_url = (repo_url or dev["repo_url"]).rstrip("/")
        from .fetchers import CountingFetcher, fetcher_for

        try:
            inner = fetcher or fetcher_for(self.repo_url, config.http_timeout)
        except ValueError as exc:
            raise OtaError(str(exc)) from None
        self.fetcher = CountingFetcher(inner)
        self.config = config

    # -- TUF ---------------------------------------------------------------------------------
    def _updater(self):
        from tuf.ngclient import Updater

        (self.root / "tuf").mkdir(parents=True, exist_ok=True)
        return Updater(metadata_dir=str(self.root / "tuf"), metadata_base_url=f"{self.repo_url}/metadata/",
                       target_dir=str(self.root / "staging"), target_base_url=f"{self.repo_url}/targets/",
                       fetcher=self.fetcher, bootstrap=self._bootstrap())

    def _trusted(self):
        """The newest root this device verified (its trust store), else the shipped root."""
        from tuf.api.metadata import Metadata, Root
        from tuf.api.serialization import DeserializationError

        for version, data in sorted(trusted_roots(self.root).items(), reverse=True):
            try:
                md = Metadata[Root].from_bytes(data)
            except DeserializationError:  # a torn file (cannot happen with durable writes): use an older one
                continue
            if md.signed.version == version:
                return md, data
        return Metadata[Root].from_bytes(self.bootstrap), self.bootstrap

    def _bootstrap(self) -> bytes:
        return self._trusted()[1]

    def _persist_roots(self) -> None:
        """After a refresh: every newer root tuf walked (tuf/root_history, a cache that is not
        fsynced) is re-verified step by step against the newest persisted root and written
        durably into the trust store, so a lost cache never falls back to the shipped root."""
        from tuf.api.metadata import Metadata, Root
        from tuf.api.serialization import DeserializationError

        trusted, _ = self._trusted()
        hist = self.root / "tuf" / "root_history"
        newer, raw = [], {}
        v = trusted.signed.version + 1
        while (hist / f"{v}.root.json").is_file():
            data = (hist / f"{v}.root.json").read_bytes()
            try:
                newer.append(Metadata[Root].from_bytes(data))
            except DeserializationError:  # tuf verified it before caching; a torn copy ends the walk
                break
            raw[v] = data
            v += 1
        for md in core.verify_root_chain(trusted, newer):
            ver = md.signed.version
            slots.persist_file(self.root / TRUSTED_ROOTS / f"{ver}.root.json", raw[ver], f"trust.root[{ver}]")

    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except UpdateRefused:
            raise
        except Exception as exc:  # tuf errors (and anything a transport raises) become refusals
            from tuf.api import exceptions as ex
            if not isinstance(exc, (ex.RepositoryError, ex.DownloadError, OSError, ValueError)):
                raise
            detail = f"{what}: {type(exc).__name__}: {exc}"
            if exc.__cause__ is not None:
                detail += f" ({type(exc.__cause__).__name__}: {exc.__cause__})"
            reason = _tuf_reason(exc)
            if reason == "target-hash" and what.startswith("refreshing"):
                reason = "metadata-hash"  # snapshot/timestamp name the hash and length of what they list
            raise UpdateRefused(reason, detail) from None

    def _download(self, up, path: str, name: str):
        info = self._guard(f"looking up target {path!r}", up.get_targetinfo, path)
        if info is None:
            raise UpdateRefused("metadata", f"target {path!r} is not in the signed targets metadata")
        dest = self.root / "staging" / name
        self._guard(f"downloading {path!r}", up.download_target, info, str(dest))
        slots.crashpoint(f"stage.download[{name}]")
        data = dest.read_bytes()
        core.check_hashes(path, core.sha256_bytes(data), len(data), info.length, info.hashes)
        return info, data

    def _target_url(self, up, info) -> str:
        """The URL tuf's ``download_target`` would use (consistent-snapshot targets carry their hash)."""
        path = info.path
        # tuf 7's Updater has no public accessor for the trusted root; download_target reads the same field
        if up._trusted_set.root.consistent_snapshot and up.config.prefix_targets_with_hash:  # noqa: SLF001
            d, sep, base = path.rpartition("/")
            path = f"{d}{sep}{next(iter(info.hashes.values()))}.{base}"
        return f"{self.repo_url}/targets/{path}"

    def _download_streamed(self, up, info, name: str) -> Path:
        """Stream a (big) target into ``staging/<name>``: hashed while it arrives, resumed after a
        dropped connection, compared with the signed length and every signed hash.

        The bytes go to ``downloads/<signed sha256>.part`` first, which survives a run that ends
        with a transport error (dropped connections past ``max_resumes``, the deadline, a power
        cut): the next run for the same signed target continues it with ``Range``. A partial of
        any other target is removed; a continued partial whose digest turns out wrong (local
        corruption) is discarded and the download starts over once."""
        from .fetchers import download_to_file

        ddir = self.root / slots.DOWNLOADS
        if os.path.lexists(ddir) and (ddir.is_symlink() or not ddir.is_dir()):
            slots.remove_path(ddir)
        ddir.mkdir(exist_ok=True)
        part = ddir / f"{core._hex64('sha256', info.hashes.get('sha256'))}.part"  # noqa: SLF001
        for p in ddir.iterdir():
            if p.name != part.name:
                slots.remove_path(p)
        url = self._target_url(up, info)
        for attempt in (0, 1):
            try:
                dl = self._guard(f"downloading {info.path!r}", download_to_file, self.fetcher, url, part, info.length,
                                 sorted(info.hashes), self.config.max_resumes, None, True)
            except UpdateRefused as exc:
                if exc.reason in ("download-range", "download-length", "download-http"):
                    slots.remove_path(part)  # nothing worth continuing
                raise
            slots.crashpoint(f"stage.download[{name}]")
            good = dl.length == info.length and all(dl.hashes.get(a) == w for a, w in info.hashes.items())
            if good or not dl.resumed_from or attempt:
                break
            slots.remove_path(part)  # an earlier run's partial was corrupt: start over from byte 0
        if not good:
            slots.remove_path(part)
        core.check_hashes(info.path, dl.hashes.get("sha256", ""), dl.length, info.length, info.hashes)
        for alg, want in info.hashes.items():
            if dl.hashes.get(alg) != want:
                raise UpdateRefused("target-hash", f"{info.path}: {alg} of the download differs from the signed one")
        dest = self.root / "staging" / name
        os.replace(part, dest)
        ddir.rmdir()
        self.download = {"resumes": dl.resumes, "restarts": dl.restarts + attempt, "bytes": dl.length,
                         "resumed_from_earlier_run": dl.resumed_from}
        return dest

    # -- public --------------------------------------------------------------------------------
    def update(self) -> Dict[str, Any]:
        """Check the repository and install a newer release if there is one. Returns a record
        (status ``installed`` or ``up-to-date``, release, slot, bytes, timings); raises
        :class:`UpdateRefused` (nothing changed) on any failed rule, ``[busy]`` when another
        update holds the device lock."""
        with slots.update_lock(self.root, self.config.lock_wait_s, "this update"):
            return self._update()

    def _running(self, link: Optional[str]) -> Optional[Dict[str, Any]]:
        if link is None:
            return None
        try:
            return core.contract_of(load_bundle(slots.Layout(self.root).slot(link), verify=True).manifest)
        except RuntimeUQError:
            return None

    def _update(self) -> Dict[str, Any]:
        t0 = time.perf_counter()
        slots.repair(self.root)
        state = slots.read_state(self.root)
        link = slots.link_slot(self.root)
        pending = state.get("pending")
        if pending and pending.get("slot") == link and slots._has_fallback(self.root, state, link):  # noqa: SLF001
            raise UpdateRefused("pending", f"release {pending.get('release')} is still on trial; "
                                "mark it good or roll it back before installing another")
        (self.root / "staging").mkdir(parents=True)
        slots.crashpoint("stage.mkdir")
        up = self._updater()
        try:
            self._guard("refreshing TUF metadata", up.refresh)
        finally:  # roots verified before a later refusal (say, an expired timestamp) are kept too
            self._persist_roots()
        _, channel = self._download(up, core.channel_target_path(self.device.board, self.device.model), "channel.json")
        number, path = core.parse_channel(channel, self.device)
        from .rollout import gate  # staged rollouts (h4 hook): not in this stage / halted -> stay or roll back
        held = gate(self, up, number, path, state, link)
        if held is not None:
            return held
        current = (state.get("slots") or {}).get(link or "", {}) if link else {}
        running_digest = slots._digest(self.root, link)  # noqa: SLF001
        if link and current.get("release") == number and running_digest is not None:
            shutil.rmtree(self.root / "staging", ignore_errors=True)
            return {"status": "up-to-date", "release": number, "slot": link, "bytes": self.fetcher.bytes}
        info = self._guard(f"looking up target {path!r}", up.get_targetinfo, path)
        if info is None:
            raise UpdateRefused("metadata", f"channel names {path!r}, which is not in the signed targets metadata")
        release = core.check_release(path, info.length, info.hashes, info.custom, self.device,
                                     int(state.get("floor", 0)), state.get("rejected", ()))
        if running_digest is not None and (release.manifest_sha256 == running_digest
                                           or release.sha256 == current.get("sha256")):
            # the same bundle republished under a new release number: nothing to write
            shutil.rmtree(self.root / "staging", ignore_errors=True)
            return {"status": "up-to-date", "release": current.get("release"), "signed_release": release.release,
                    "slot": link, "bytes": self.fetcher.bytes, "same_bundle": True}
        archive_path, used_delta = self._fetch_release(up, info, release, link, current)
        t_dl = time.perf_counter()
        record = {"release": release.release, "model_version": release.model_version, "sha256": release.sha256,
                  "manifest_sha256": release.manifest_sha256, "target": release.path}
        slot, report = self._install_archive(archive_path, release, link, record)
        t_can = time.perf_counter()
        slots.commit(self.root, slot, record, self.config.attempts, self.config.healthy_needed)
        shutil.rmtree(self.root / "staging", ignore_errors=True)
        slots.crashpoint("stage.cleaned")
        t_end = time.perf_counter()
        return {"status": "installed", "release": release.release, "model_version": release.model_version,
                "slot": slot, "delta": used_delta, "bytes": self.fetcher.bytes, "canaries": report.to_json(),
                "download": dict(self.download),
                "seconds": {"download_verify": t_dl - t0, "canaries": t_can - t_dl, "install": t_end - t_can,
                            "total": t_end - t0}}

    def _install_archive(self, archive_path: Path, release: core.Release, link: Optional[str],
                         record: Dict[str, Any]):
        """Check the archive's members and manifest, stream its files into the inactive slot's
        ``x.tmp``, check them against the manifest and the signed digests, run the canaries there,
        seal the slot (the old inactive slot is replaced only now). Returns (slot, canary report);
        on any refusal ``x.tmp`` is removed and nothing else was touched."""
        from ..manifest import MAX_MANIFEST_BYTES

        with open(archive_path, "rb") as fh:
            bundle = archive.BundleArchive(fh, max_total=release.length)
            raw_manifest = bundle.read_small("manifest.json", MAX_MANIFEST_BYTES)
            manifest = self._manifest({"manifest.json": raw_manifest})
            core.check_contract(release.contract, core.contract_of(manifest), self._running(link), self.device)
            spec = canaries.canaries_of(manifest)
            # refuse a file list that differs from the manifest before writing a byte
            names = set(bundle.names) - {"manifest.json"}
            if names != set(manifest.files):
                raise UpdateRefused("bundle-integrity", f"archive files do not match manifest.json: extra "
                                    f"{sorted(names - set(manifest.files))}, missing "
                                    f"{sorted(set(manifest.files) - names)}")
            slot, tmp = slots.begin_slot(self.root)
            try:
                dirs: set = {tmp}
                actual = {name: slots.write_slot_file(tmp, name, bundle.chunks(name), dirs) for name in bundle.names}
                core.check_bundle_files(bundle.names, actual["manifest.json"], manifest.files, actual, release,
                                        spec.file if spec else None)
                # canaries run on the new slot's tmp copy: a refused model never replaces the fallback slot
                report = canaries.run_canaries(tmp, threads=self.config.threads)
                slots.finish_slot(self.root, slot, tmp, dirs, info=record)
            except BaseException:
                if os.path.lexists(tmp):
                    slots.remove_path(tmp)
                raise
        return slot, report

    def _manifest(self, files: Dict[str, bytes]) -> Manifest:
        try:
            return Manifest.loads(files["manifest.json"].decode("utf-8"))
        except (UnicodeDecodeError, RuntimeUQError) as exc:
            raise UpdateRefused("bundle-integrity", f"bundle manifest refused by this runtime: {exc}") from None

    def _fetch_release(self, up, info, release: core.Release, link: Optional[str], current: Dict[str, Any]):
        """The release archive in ``staging/bundle.tar``: from a signed delta when one patches the
        installed archive and the archive is small enough to patch in memory, else streamed."""
        self.download = {"resumes": 0, "restarts": 0, "bytes": 0, "resumed_from_earlier_run": 0}
        if self.config.delta and link and isinstance(current.get("release"), int) \
                and info.length <= self.config.delta_max_bytes:
            base_dir = slots.Layout(self.root).slot(link)
            try:
                if sum(p.stat().st_size for p in base_dir.rglob("*") if p.is_file()) > self.config.delta_max_bytes:
                    raise ValueError("base too large to patch in memory")
                load_bundle(base_dir, verify=True)
                base = archive.pack_bundle(base_dir)
            except (RuntimeUQError, OSError, ValueError, KeyError):
                base = None
            dpath = core.delta_target_path(self.device.board, self.device.model, current["release"], release.release)
            dinfo = self._guard(f"looking up target {dpath!r}", up.get_targetinfo, dpath) if base else None
            if dinfo is not None:
                delta = core.check_delta(dpath, dinfo.length, dinfo.hashes, dinfo.custom,
                                         core.sha256_bytes(base), release)
                if delta is not None:
                    _, patch = self._download(up, dpath, "delta.bsdiff")
                    data = bounded_patch(base, patch, info.length)
                    core.check_hashes(f"{release.path} (from delta)", core.sha256_bytes(data), len(data),
                                      info.length, info.hashes)
                    dest = self.root / "staging" / "bundle.tar"
                    dest.write_bytes(data)
                    self.download["bytes"] = len(patch)
                    return dest, True
        return self._download_streamed(up, info, "bundle.tar"), False
