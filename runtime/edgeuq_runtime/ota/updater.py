"""The device updater: TUF refresh, channel, release rules, full or delta download, staging,
canaries, A/B slot write, commit. Any refusal leaves ``current`` and its slot untouched.

    upd = OtaUpdater("/var/lib/edgeuq")           # reads device.json + trust/root.json
    outcome = upd.update()                         # raises UpdateRefused with a reason

``provision(root, board=..., model=..., repo_url=..., root_json=...)`` writes the device
identity and the bootstrap root the device ships with (TUF 7 needs one).
"""
from __future__ import annotations

import json
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

__all__ = ["UpdateConfig", "OtaUpdater", "provision", "DEVICE_FILE", "ROOT_FILE"]

DEVICE_FILE = "device.json"
ROOT_FILE = "trust/root.json"


@dataclass(frozen=True)
class UpdateConfig:
    attempts: int = 3            # trial boots before an unconfirmed release is rolled back
    healthy_needed: int = 20     # healthy windows in service that mark a release good
    delta: bool = True           # use a signed bsdiff delta when one fits the installed archive
    threads: Optional[int] = 1   # backend threads for the canary run
    http_timeout: Optional[float] = None


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


def _tuf_reason(exc: BaseException) -> str:
    from tuf.api import exceptions as ex

    for cls, reason in ((ex.ExpiredMetadataError, "expired"), (ex.UnsignedMetadataError, "signature"),
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
                       fetcher=self.fetcher, bootstrap=self.bootstrap)

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
            raise UpdateRefused(_tuf_reason(exc), detail) from None

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

    # -- public --------------------------------------------------------------------------------
    def update(self) -> Dict[str, Any]:
        """Check the repository and install a newer release if there is one. Returns a record
        (status ``installed`` or ``up-to-date``, release, slot, bytes, timings); raises
        :class:`UpdateRefused` (nothing changed) on any failed rule."""
        t0 = time.perf_counter()
        state = slots.read_state(self.root)
        link = slots.link_slot(self.root)
        if state.get("pending") and state["pending"].get("slot") == link:
            raise UpdateRefused("pending", f"release {state['pending'].get('release')} is still on trial; "
                                "mark it good or roll it back before installing another")
        slots.cleanup(self.root)
        (self.root / "staging").mkdir(parents=True)
        slots.crashpoint("stage.mkdir")
        up = self._updater()
        self._guard("refreshing TUF metadata", up.refresh)
        _, channel = self._download(up, core.channel_target_path(self.device.board, self.device.model), "channel.json")
        number, path = core.parse_channel(channel, self.device)
        from .rollout import gate  # staged rollouts (h4 hook): not in this stage / halted -> stay or roll back
        held = gate(self, up, number, path, state, link)
        if held is not None:
            return held
        current = (state.get("slots") or {}).get(link or "", {}) if link else {}
        if link and current.get("release") == number:
            shutil.rmtree(self.root / "staging", ignore_errors=True)
            return {"status": "up-to-date", "release": number, "slot": link, "bytes": self.fetcher.bytes}
        info = self._guard(f"looking up target {path!r}", up.get_targetinfo, path)
        if info is None:
            raise UpdateRefused("metadata", f"channel names {path!r}, which is not in the signed targets metadata")
        release = core.check_release(path, info.length, info.hashes, info.custom, self.device,
                                     int(state.get("floor", 0)), state.get("rejected", ()))
        data, used_delta = self._fetch_release(up, info, release, link, current)
        t_dl = time.perf_counter()
        files = archive.unpack_bundle(data)
        manifest = self._manifest(files)
        spec = canaries.canaries_of(manifest)
        actual = {n: core.sha256_bytes(b) for n, b in files.items()}
        core.check_bundle_files(list(files), actual["manifest.json"], manifest.files, actual, release,
                                spec.file if spec else None)
        # Canaries run on a staged copy first, so a refused model never overwrites the fallback slot.
        stage_dir = self.root / "staging" / "bundle"
        for name, blob in files.items():
            (stage_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (stage_dir / name).write_bytes(blob)
        report = canaries.run_canaries(stage_dir, threads=self.config.threads)
        t_can = time.perf_counter()
        slot = slots.write_slot(self.root, files)
        record = {"release": release.release, "model_version": release.model_version, "sha256": release.sha256,
                  "manifest_sha256": release.manifest_sha256, "target": release.path}
        slots.commit(self.root, slot, record, self.config.attempts, self.config.healthy_needed)
        shutil.rmtree(self.root / "staging", ignore_errors=True)
        slots.crashpoint("stage.cleaned")
        t_end = time.perf_counter()
        return {"status": "installed", "release": release.release, "model_version": release.model_version,
                "slot": slot, "delta": used_delta, "bytes": self.fetcher.bytes, "canaries": report.to_json(),
                "seconds": {"download_verify": t_dl - t0, "canaries": t_can - t_dl, "install": t_end - t_can,
                            "total": t_end - t0}}

    def _manifest(self, files: Dict[str, bytes]) -> Manifest:
        try:
            return Manifest.loads(files["manifest.json"].decode("utf-8"))
        except (UnicodeDecodeError, RuntimeUQError) as exc:
            raise UpdateRefused("bundle-integrity", f"bundle manifest refused by this runtime: {exc}") from None

    def _fetch_release(self, up, info, release: core.Release, link: Optional[str], current: Dict[str, Any]):
        if self.config.delta and link and isinstance(current.get("release"), int):
            base_dir = slots.Layout(self.root).slot(link)
            try:
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
                    import bsdiff4

                    try:
                        data = bsdiff4.patch(base, patch)
                    except Exception as exc:
                        raise UpdateRefused("delta", f"delta {dpath!r} does not apply: {exc}") from None
                    core.check_hashes(f"{release.path} (from delta)", core.sha256_bytes(data), len(data),
                                      info.length, info.hashes)
                    return data, True
        _, data = self._download(up, release.path, "bundle.tar")
        return data, False
