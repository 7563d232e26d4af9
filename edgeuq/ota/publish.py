"""`edgeuq publish BUNDLE --repo DIR`: sign a bundle release into a static TUF repository.

Per release three kinds of targets are added (see ``edgeuq_runtime.ota.core`` for paths):

* the bundle as one deterministic tar, with custom metadata ``{"edgeuq": {board, model,
  model_version, release, runtime_abi, canary_sha256, manifest_sha256}}`` — integers and
  strings only (canonical JSON has no floats);
* bsdiff4 deltas from up to ``delta_bases`` earlier releases, only when the patch is at
  most ``delta_max_ratio`` of the full archive, with base and result sha256 in custom;
* the channel file ``channels/<board>/<model>.json`` naming the newest release.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from edgeuq_runtime import load_bundle, sha256_file
from edgeuq_runtime.ota import archive, core
from edgeuq_runtime.ota.canaries import canaries_of

from .keys import KeySet, keys_for_publish
from .repository import EXPIRY_DAYS, TufRepository

__all__ = ["PublishResult", "add_release", "publish_bundle", "make_delta", "refresh_repository"]


@dataclass(frozen=True)
class PublishResult:
    release: int
    target: str
    full_bytes: int
    deltas: Dict[str, int]          # delta path -> patch bytes (only the ones published)
    skipped_deltas: Dict[str, int]  # delta path -> patch bytes judged too large
    root_version: int
    targets_version: int


def make_delta(base: bytes, new: bytes) -> bytes:
    import bsdiff4

    return bsdiff4.diff(base, new)


def _releases(repo: TufRepository, board: str, model: str) -> Dict[int, str]:
    prefix = core.bundle_target_path(board, model, 0).rsplit("/", 1)[0] + "/"
    out = {}
    for path in repo.target_infos(prefix):
        m = re.fullmatch(r"r(\d+)\.tar", path[len(prefix):])
        if m:
            out[int(m.group(1))] = path
    return out


def add_release(repo: TufRepository, bundle_dir: Path, board: str, *, release: Optional[int] = None,
                runtime_abi: int = core.RUNTIME_ABI, delta_max_ratio: float = 0.5, delta_bases: int = 3,
                custom_override: Optional[Mapping[str, Any]] = None) -> PublishResult:
    """Add one bundle release (plus deltas and the channel file) to ``repo`` (not yet signed)."""
    bundle = load_bundle(bundle_dir, verify=True)
    m = bundle.manifest
    spec = canaries_of(m)
    if spec is None:
        raise ValueError(f"bundle {str(bundle_dir)!r} has no canaries; add them first (edgeuq publish --canaries ...)")
    model = m.model_name
    existing = _releases(repo, board, model)
    top = max(existing, default=0)
    number = top + 1 if release is None else int(release)
    if number <= top:
        raise ValueError(f"release {number} is not above the newest published release {top} of {board}/{model}")
    if number > top + core.MAX_RELEASE_STEP:
        raise ValueError(f"release {number} is more than {core.MAX_RELEASE_STEP} above the newest published release "
                         f"{top} of {board}/{model}; devices refuse such a jump (it would raise their floor for good)")
    data = archive.pack_bundle(bundle.root)
    path = core.bundle_target_path(board, model, number)
    meta = {"board": board, "model": model, "model_version": m.model_version, "release": number,
            "runtime_abi": int(runtime_abi), "canary_sha256": m.files[spec.file],
            "manifest_sha256": sha256_file(bundle.root / "manifest.json")}
    meta.update(core.contract_of(m))  # model, model_version, manifest_version, input, classes
    meta.update(custom_override or {})
    result_tf = repo.add_target(path, data, {core.CUSTOM_KEY: meta})
    deltas, skipped = {}, {}
    for base_no in sorted(existing, reverse=True)[:delta_bases]:
        base = repo.target_bytes(existing[base_no])
        patch = make_delta(base, data)
        dpath = core.delta_target_path(board, model, base_no, number)
        if len(patch) <= delta_max_ratio * len(data):
            repo.add_target(dpath, patch, {core.CUSTOM_KEY: {"delta": {
                "base_release": base_no, "base_sha256": core.sha256_bytes(base),
                "result_sha256": result_tf.hashes["sha256"], "result_length": len(data)}}})
            deltas[dpath] = len(patch)
        else:
            skipped[dpath] = len(patch)
    channel = json.dumps({"release": number, "target": path}, sort_keys=True).encode()
    repo.add_target(core.channel_target_path(board, model), channel)
    return PublishResult(release=number, target=path, full_bytes=len(data), deltas=deltas, skipped_deltas=skipped,
                         root_version=repo.root.signed.version, targets_version=repo.targets.signed.version + 1)


def publish_bundle(bundle_dir: Path, repo_dir: Path, keydir: Path, board: str, *, release: Optional[int] = None,
                   runtime_abi: int = core.RUNTIME_ABI, delta_max_ratio: float = 0.5,
                   expiry_days: Mapping[str, float] = EXPIRY_DAYS, passphrase=None,
                   passphrase_file: Optional[Path] = None) -> PublishResult:
    """Load (or create) the repository in ``repo_dir``, rotate the root if the keys changed,
    add the release, sign every role, and write the static tree (timestamp last)."""
    # only the keys this publish needs (root only for a first publish or a rotation) -- h4 hook
    keys: KeySet = keys_for_publish(keydir, repo_dir, passphrase=passphrase, passphrase_file=passphrase_file)
    repo_dir = Path(repo_dir)
    if (repo_dir / "metadata" / "timestamp.json").exists():
        repo = TufRepository.load(repo_dir)
        repo.sync_keys(keys, expiry_days)
    else:
        repo = TufRepository.create(keys, expiry_days)
    res = add_release(repo, Path(bundle_dir), board, release=release, runtime_abi=runtime_abi,
                      delta_max_ratio=delta_max_ratio)
    repo.publish(keys, expiry_days)
    repo.save(repo_dir)
    return PublishResult(**{**res.__dict__, "root_version": repo.root.signed.version,
                            "targets_version": repo.targets.signed.version})


def refresh_repository(repo_dir: Path, keydir: Path, expiry_days: Mapping[str, float] = EXPIRY_DAYS,
                       passphrase=None, passphrase_file: Optional[Path] = None) -> TufRepository:
    """Re-sign snapshot and timestamp (targets untouched, no new release): run it before the
    timestamp expires. Loads only the snapshot and timestamp keys (root and targets stay offline)."""
    keys: KeySet = keys_for_publish(keydir, repo_dir, passphrase=passphrase, passphrase_file=passphrase_file,
                                    roles=("snapshot", "timestamp"))
    repo_dir = Path(repo_dir)
    if not (repo_dir / "metadata" / "timestamp.json").exists():
        raise FileNotFoundError(f"no repository in {str(repo_dir)!r} (metadata/timestamp.json missing)")
    repo = TufRepository.load(repo_dir)
    repo.refresh(keys, expiry_days)
    repo.save(repo_dir)
    return repo
