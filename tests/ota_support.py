"""Support for the OTA fault suite: tiny bundles, an in-memory TUF repository simulator, a
real HTTP server on 127.0.0.1, and the "refused and untouched" check.

The simulator is our own (~100 lines): a ``FetcherInterface`` whose files come from a
:class:`edgeuq.ota.repository.TufRepository` (the same code ``edgeuq publish`` uses), plus
hooks that tamper with, truncate, replay or stream a file endlessly.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import http.server
import io
import json
import os
import shutil
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np
import pytest

from require_extras import require_extra

require_extra("tuf", "ota")
require_extra("bsdiff4", "ota")
require_extra("securesystemslib", "ota")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runtime" / "tests"))
from rt_helpers import C, F, L, make_head, make_manifest, make_trunk  # noqa: E402

from tuf.api import exceptions as tuf_ex  # noqa: E402
from tuf.ngclient import FetcherInterface  # noqa: E402

from edgeuq.ota.canaries import add_canaries  # noqa: E402
from edgeuq.ota.keys import KeySet, generate_keys, load_keys  # noqa: E402
from edgeuq.ota.localhttp import LocalHTTPServer  # noqa: E402
from edgeuq.ota.publish import add_release  # noqa: E402
from edgeuq.ota.repository import EXPIRY_DAYS, TufRepository  # noqa: E402
from edgeuq_runtime import UncertaintyRuntime, sha256_file, write_bundle  # noqa: E402
from edgeuq_runtime.ota import current_bundle, mark_good  # noqa: E402
from edgeuq_runtime.ota.errors import UpdateRefused  # noqa: E402
from edgeuq_runtime.ota.slots import link_slot, read_state  # noqa: E402
from edgeuq_runtime.ota.updater import OtaUpdater, UpdateConfig, provision  # noqa: E402

BOARD, MODEL = "test-board", "tiny-har"
# private keys are encrypted at rest; the suite's keys use this passphrase (never a real one)
os.environ.setdefault("EDGEUQ_OTA_PASSPHRASE", "edgeuq-test-passphrase")
MEM = "mem://repo"
FAST = UpdateConfig(attempts=2, healthy_needed=3, threads=1)


# -- tiny bundles --------------------------------------------------------------------------------
def weights(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((L, F)).astype(np.float32), 3.0 * rng.standard_normal((F, C)).astype(np.float32)


CANARY_WINDOWS = np.random.default_rng(99).standard_normal((6, L)).astype(np.float32)


def make_bundle(root: Path, name: str, W: np.ndarray, V: np.ndarray, version: str = "1.0",
                canaries: bool = True, **canary_kw: Any) -> Path:
    src = root / f"{name}-src"
    src.mkdir(parents=True)
    write_bundle(root / name, make_manifest(model_version=version),
                 {"trunk.onnx": make_trunk(src / "trunk.onnx", W), "head.onnx": make_head(src / "head.onnx", V)})
    if canaries:
        add_canaries(root / name, CANARY_WINDOWS, seed=0, **canary_kw)
    return root / name


def tar_of(files: Dict[str, bytes], extra: Optional[Callable[[tarfile.TarFile], None]] = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return buf.getvalue()


def bundle_files(bundle: Path) -> Dict[str, bytes]:
    m = json.loads((bundle / "manifest.json").read_text())
    return {"manifest.json": (bundle / "manifest.json").read_bytes(), **{n: (bundle / n).read_bytes() for n in m["files"]}}


def release_meta(bundle: Path, release: int, **over: Any) -> Dict[str, Any]:
    m = json.loads((bundle / "manifest.json").read_text())
    canary = m.get("canaries")
    meta = {"board": BOARD, "model": MODEL, "model_version": m["model"]["version"], "release": release,
            "runtime_abi": 1, "canary_sha256": m["files"].get(canary["file"]) if canary else "0" * 64,
            "manifest_sha256": sha256_file(bundle / "manifest.json")}
    from edgeuq_runtime import load_bundle
    from edgeuq_runtime.ota import core
    meta.update(core.contract_of(load_bundle(bundle, verify=False).manifest))  # the signed model contract
    meta.update(over)
    return meta


# -- the in-memory repository simulator ---------------------------------------------------------
class RepoSimulator(FetcherInterface):
    """Serves ``mem://repo/<path>`` from a dict; every published file stays (old versions too)."""

    def __init__(self, repo: TufRepository, keys: KeySet) -> None:
        self.repo, self.keys = repo, keys
        self.files: Dict[str, bytes] = {}
        self.hooks: Dict[str, Callable[[], Iterator[bytes]]] = {}
        self.requests: list = []
        self.sync()

    def sync(self) -> None:
        self.files.update(self.repo.files())

    def publish(self, keys: Optional[KeySet] = None, **expiry: float) -> None:
        self.repo.publish(keys or self.keys, {**EXPIRY_DAYS, **expiry})
        self.sync()

    def release(self, bundle: Path, keys: Optional[KeySet] = None, **kw: Any):
        res = add_release(self.repo, bundle, BOARD, **kw)
        self.publish(keys)
        return res

    def raw_release(self, data: bytes, meta: Dict[str, Any]) -> str:
        """Sign an arbitrary archive as release ``meta['release']`` and point the channel at it."""
        from edgeuq_runtime.ota import core

        path = core.bundle_target_path(BOARD, MODEL, meta["release"])
        self.repo.add_target(path, data, {core.CUSTOM_KEY: meta})
        self.repo.add_target(core.channel_target_path(BOARD, MODEL),
                             json.dumps({"release": meta["release"], "target": path}).encode())
        self.publish()
        return path

    def url_of(self, target_path: str) -> str:
        from edgeuq.ota.repository import target_file_name

        tf = self.repo.targets.signed.targets[target_path]
        return "targets/" + target_file_name(target_path, tf.hashes["sha256"])

    def edit_json(self, rel: str, fn: Callable[[dict], None]) -> None:
        """Change a served metadata file without re-signing it."""
        obj = json.loads(self.files[rel])
        fn(obj)
        self.files[rel] = json.dumps(obj).encode()

    def _fetch(self, url: str) -> Iterator[bytes]:
        rel = url[len(MEM) + 1:]
        self.requests.append(rel)
        if rel in self.hooks:
            return self.hooks[rel]()
        if rel not in self.files:
            raise tuf_ex.DownloadHTTPError(f"404 {rel}", 404)
        return iter([self.files[rel]])


def endless(chunk: bytes = b"\0" * 4096) -> Callable[[], Iterator[bytes]]:
    def gen() -> Iterator[bytes]:
        while True:
            yield chunk
    return gen


def fresh_keys(tmp: Path, name: str, **kw: Any) -> KeySet:
    generate_keys(tmp / name, **kw)
    return load_keys(tmp / name)


def swap_role(keys: KeySet, role: str, other: KeySet) -> KeySet:
    return dataclasses.replace(keys, signers={**keys.signers, role: other.signers[role]})


# -- a world: keys, r1 published and installed (good) on a device template ------------------------
@dataclass
class World:
    tmp: Path
    keys: KeySet
    attacker: KeySet
    repo: TufRepository
    files: Dict[str, bytes]
    device: Path
    bundles: Dict[str, Path] = field(default_factory=dict)

    def fresh(self, dest: Path):
        """A private copy of the repository (simulator) and of the device."""
        sim = RepoSimulator(copy.deepcopy(self.repo), self.keys)
        sim.files = dict(self.files)
        dev = dest / "dev"
        shutil.copytree(self.device, dev, symlinks=True)
        return sim, dev


def build_world(tmp: Path) -> World:
    keys = fresh_keys(tmp, "keys")
    attacker = fresh_keys(tmp, "attacker")
    W, V = weights(0)
    bundles = {
        "r1": make_bundle(tmp, "r1", W, V, "1.0"),
        # head-only retrain: same trunk, head nudged (classes of the canaries unchanged)
        "r2": make_bundle(tmp, "r2", W, V + 0.02 * weights(1)[1], "1.1"),
        "r3": make_bundle(tmp, "r3", W, V + 0.03 * weights(2)[1], "1.2"),
    }
    repo = TufRepository.create(keys)
    sim = RepoSimulator(repo, keys)
    sim.release(bundles["r1"])
    dev = tmp / "device"
    provision(dev, BOARD, MODEL, MEM, repo.roots[1])
    out = OtaUpdater(dev, fetcher=sim, repo_url=MEM, config=FAST).update()
    assert out["status"] == "installed" and out["release"] == 1
    mark_good(dev)
    return World(tmp=tmp, keys=keys, attacker=attacker, repo=repo, files=dict(sim.files), device=dev, bundles=bundles)


# -- the check every fault case makes -----------------------------------------------------------
def device_snapshot(dev: Path) -> Dict[str, Any]:
    serving = current_bundle(dev)
    return {"link": link_slot(dev), "serving": str(serving), "state": read_state(dev),
            "files": {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(serving.iterdir())}}


def assert_untouched(dev: Path, before: Dict[str, Any]) -> None:
    after = device_snapshot(dev)
    assert after == before, "a refused update changed the device"
    rt = UncertaintyRuntime(current_bundle(dev), threads=1)
    res = rt.predict(CANARY_WINDOWS, seed=0)
    assert np.isfinite(res.epistemic).all()


def update(dev: Path, fetcher: Any, repo_url: str = MEM, config: UpdateConfig = FAST) -> Dict[str, Any]:
    return OtaUpdater(dev, fetcher=fetcher, repo_url=repo_url, config=config).update()


def expect_refused(dev: Path, fetcher: Any, reasons: set, repo_url: str = MEM, config: UpdateConfig = FAST,
                   match: Optional[str] = None) -> UpdateRefused:
    before = device_snapshot(dev)
    with pytest.raises(UpdateRefused) as ei:
        update(dev, fetcher, repo_url, config)
    err = ei.value
    assert err.reason in reasons, f"refused for the wrong reason: {err}"
    if match is not None:
        assert match in str(err), str(err)
    assert str(err).startswith(f"update refused [{err.reason}]: ") and len(err.detail) > 10
    assert_untouched(dev, before)
    return err


# -- a real HTTP server on 127.0.0.1 --------------------------------------------------------------
class RepoHTTPServer(LocalHTTPServer):
    """Serves a repository directory; ``behaviour[path_suffix]`` makes a file misbehave:
    ``endless``, ``truncate`` (claims the full length, sends half, closes), ``slow`` (stalls),
    ``500``, ``redirect``, ``drip`` (body one byte every 0.5 s), ``drip-headers`` (status line
    and headers one byte every 0.5 s), ``delay`` (wait ``delay_s`` then serve), ``gate`` (the
    body one byte a second until ``gate`` is set, then the rest)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.behaviour: Dict[str, str] = {}
        self.delay_s = 4.0
        self.gate = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rel = self.path.lstrip("/")
                mode = next((m for s, m in outer.behaviour.items() if rel.endswith(s)), None)
                path = outer.directory / rel
                if mode == "500":
                    return self.send_error(500)
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://198.51.100.1/" + rel)
                    self.end_headers()
                    return
                if mode == "drip-headers":  # the status line itself, one byte every 0.5 s
                    try:
                        for b in b"HTTP/1.1 200 OK\r\nX-Drip: " + b"z" * 10000:
                            self.wfile.write(bytes([b]))
                            self.wfile.flush()
                            time.sleep(0.5)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                if mode == "delay":
                    time.sleep(outer.delay_s)
                if mode == "endless":
                    self.send_response(200)
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(b"\0" * 65536)
                    except (BrokenPipeError, ConnectionResetError):
                        return
                if not path.is_file():
                    return self.send_error(404)
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if mode == "truncate":
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if mode == "drip":  # the body, one byte every 0.5 s (never a read timeout)
                    try:
                        for i in range(len(data)):
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.5)
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    self.close_connection = True
                    return
                if mode == "gate":  # one byte a second until the test opens the gate, then the rest
                    i = 0
                    try:
                        while not outer.gate.is_set() and i < len(data) - 1:
                            self.wfile.write(data[i:i + 1])
                            self.wfile.flush()
                            i += 1
                            outer.gate.wait(1.0)
                        self.wfile.write(data[i:])
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                if mode == "slow":
                    self.wfile.write(data[:10])
                    self.wfile.flush()
                    time.sleep(1.5)
                    return
                self.wfile.write(data)

        self._listen(Handler)


def write_tree(files: Dict[str, bytes], directory: Path) -> Path:
    for rel, data in files.items():
        dest = Path(directory) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(data)
    return Path(directory)
