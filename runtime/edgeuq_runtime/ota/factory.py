"""A factory image: the first bundle written on the production line, already confirmed.

    python -m edgeuq_runtime factory-install --root /var/lib/edgeuq --bundle bundle/ --release 1 \\
        --repo https://updates.example/repo --board my-board --model bearing --trust-root root.json

The bundle comes from the image itself (trusted like the shipped root, so no TUF check):
it is verified against its own sha256 list, must be the device's model, is written as slot
``a`` with its record, marked good (``release`` becomes the version floor) and flipped to.
Later releases then have a fallback from their very first trial. Refused when the device
already has a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

from ..bundle import load_bundle
from ..errors import RuntimeUQError
from . import archive, core, slots
from .errors import OtaError

__all__ = ["install_factory"]


def install_factory(root: Path, bundle_dir: Path, release: int, model: str) -> Dict[str, Any]:
    root = Path(root)
    if isinstance(release, bool) or not isinstance(release, int) or not 0 < release <= core.MAX_RELEASE_STEP:
        raise OtaError(f"factory release must be an integer in 1..{core.MAX_RELEASE_STEP}, got {release!r}")
    try:
        bundle = load_bundle(bundle_dir, verify=True)
    except RuntimeUQError as exc:
        raise OtaError(f"factory bundle refused: {exc}") from None
    if bundle.manifest.model_name != model:
        raise OtaError(f"factory bundle is model {bundle.manifest.model_name!r}, this device runs {model!r}")
    archive_sha256, _ = archive.bundle_archive_sha256(bundle.root)  # the identity publish gives it, streamed
    with slots.update_lock(root, slots.LOCK_WAIT_S, "the factory install"):
        slots.repair(root)
        if slots.link_slot(root) is not None:
            raise OtaError(f"{str(root)!r} already has a model installed; a factory image only goes on a fresh device")
        record = {"release": release, "model_version": bundle.manifest.model_version,
                  "sha256": archive_sha256, "manifest_sha256": bundle.digest, "target": "factory",
                  "good": True}
        slot = _write_slot_streamed(root, bundle.root, ["manifest.json"] + sorted(bundle.manifest.files), record)
        state = slots.read_state(root)
        state["slots"][slot] = {k: v for k, v in record.items() if k != "good"}
        state.update(good=slot, floor=max(int(state.get("floor", 0)), release), pending=None)
        state.setdefault("history", []).append({"event": "factory-install", "slot": slot, "release": release})
        slots.write_state(root, state, "factory")
        slots._flip(root, slot, "factory.flip")  # noqa: SLF001 - the same atomic flip as an update
    return {"slot": slot, "release": release, "model_version": bundle.manifest.model_version,
            "bundle_digest": bundle.digest}


def _write_slot_streamed(root: Path, src: Path, names, record: Dict[str, Any]) -> str:
    """The inactive slot written from a bundle directory file by file (bounded memory)."""
    slot, tmp = slots.begin_slot(root)
    dirs: set = {tmp}
    try:
        for name in names:
            with open(Path(src) / name, "rb") as fh:
                slots.write_slot_file(tmp, name, iter(lambda: fh.read(archive.READ_CHUNK), b""), dirs)
    except BaseException:
        slots.remove_path(tmp)
        raise
    return slots.finish_slot(root, slot, tmp, dirs, info=record)
