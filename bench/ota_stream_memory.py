"""OTA install memory: peak RSS of the device updater installing a big bundle over HTTP, against
the same updater installing a small one, measured in one run.

Both installs are real ``python -m edgeuq_runtime update`` child processes (TUF refresh, streamed
download with sha256 while the bytes arrive, member-by-member extraction into the inactive slot,
canaries, slot verification, flip) against a repository served over HTTP on 127.0.0.1 by a
static server in this process (it streams files and honours ``Range``). The peak RSS of each
child is its ``ru_maxrss`` from ``os.wait4`` in a minimal launcher process (so the bench's own
memory is not inherited into the child's count); "extra" is big minus small, paired per repeat,
the pairs run in random order.

Bundles: the small one is the synthetic two-graph model of ``bench/ota.py`` (~2.9 MB fp32,
seeded random weights, not trained) with its canaries. The big one is the same model plus one
extra file, ``payload/extra.bin`` (seeded random bytes, --payload-mb MB), listed with its
sha256 in ``manifest.files`` -- what the bundle format allows for any data file the
application ships; the runtime verifies it on every load but the graphs do not read it. So
the measurement is the install path's memory (download, hash, extract, verify), not the
memory a model needs to load its own weights (which a device must have anyway to serve).

    python bench/ota_stream_memory.py                       # 500 MB payload, 2 pairs
    python bench/ota_stream_memory.py --quick               # 64 MB payload, 1 pair
    python bench/ota_stream_memory.py --drops 0             # the big download is never cut (default: once)
    python bench/ota_stream_memory.py --json results/ota_stream_memory.json
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.server
import importlib.util
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edgeuq.ota.localhttp import LocalHTTPServer

ROOT = Path(__file__).resolve().parents[1]
BOUND_MB = 64.0          # the goal: extra peak RSS of a big install below this
PAYLOAD = "payload/extra.bin"


# -- a static repository server with Range support (also used by tests/test_ota_stream.py) --------
class RangeRepoServer(LocalHTTPServer):
    """Serves a directory on 127.0.0.1, streaming files in 1 MiB pieces, honouring
    ``Range: bytes=N-`` with a ``206`` and ``Content-Range``. Misbehaviour per path suffix:

    * ``drops[suffix] = n``: the first ``n`` responses for it stop after ``drop_fraction`` of
      the body they promised and close the connection (a dropped connection);
    * ``ignore_range``: suffixes answered ``200`` with the whole file whatever the Range;
    * ``lie[suffix]``: a Range request is answered ``206`` with a wrong ``Content-Range``
      (``"start"``: another first byte, ``"total"``: another length, ``"malformed"``,
      ``"missing"``: no Content-Range header at all);
    * ``range_status[suffix] = code``: a Range request is answered with that error status;
    * ``stall_ranged``: suffixes whose Range requests get headers, then one byte every
      ``drip_s`` seconds (never a read timeout; only the client's deadline ends it).

    ``requests`` records (path, Range header or None, status) of every request.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.drops: Dict[str, int] = {}
        self.drop_fraction = 0.4
        self.ignore_range: set = set()
        self.lie: Dict[str, str] = {}
        self.range_status: Dict[str, int] = {}
        self.stall_ranged: set = set()
        self.drip_s = 0.2
        self.requests: List[Tuple[str, Optional[str], int]] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                rel = self.path.lstrip("/")
                path = outer.directory / rel
                rng = self.headers.get("Range")
                if not path.is_file():
                    outer._log(rel, rng, 404)
                    self.send_error(404)
                    return
                size = path.stat().st_size
                start = 0
                m = re.fullmatch(r"bytes=(\d+)-", rng or "")
                bad = outer.range_status.get(outer._match(rel, outer.range_status) or "")
                if rng and bad:
                    outer._log(rel, rng, bad)
                    self.send_response(bad)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if rng and m and not outer._match(rel, outer.ignore_range):
                    start = int(m.group(1))
                    if start >= size:
                        outer._log(rel, rng, 416)
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    lie = outer.lie.get(outer._match(rel, outer.lie) or "")
                    crange = {None: f"bytes {start}-{size - 1}/{size}",
                              "start": f"bytes {max(0, start - 100)}-{size - 1}/{size}",
                              "total": f"bytes {start}-{size + 99}/{size + 100}",
                              "malformed": "bytes whatever", "missing": None}[lie]
                    status = 206
                else:
                    status = 200
                body_len = size - start
                with outer._lock:
                    suffix = outer._match(rel, outer.drops)
                    drop = bool(suffix) and outer.drops[suffix] > 0
                    if drop:
                        outer.drops[suffix] -= 1
                outer._log(rel, rng, status)
                self.send_response(status)
                self.send_header("Content-Length", str(body_len))
                if status == 206 and crange is not None:
                    self.send_header("Content-Range", crange)
                self.end_headers()
                limit = int(body_len * outer.drop_fraction) if drop else body_len
                try:
                    with open(path, "rb") as fh:
                        fh.seek(start)
                        if status == 206 and outer._match(rel, outer.stall_ranged):
                            for _ in range(body_len):
                                self.wfile.write(fh.read(1))
                                self.wfile.flush()
                                time.sleep(outer.drip_s)
                            return
                        left = limit
                        while left > 0:
                            block = fh.read(min(1 << 20, left))
                            if not block:
                                break
                            self.wfile.write(block)
                            left -= len(block)
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if drop:
                    self.close_connection = True

        self._listen(Handler)

    @staticmethod
    def _match(rel: str, table) -> Optional[str]:
        return next((s for s in table if rel.endswith(s)), None)

    def _log(self, rel: str, rng: Optional[str], status: int) -> None:
        with self._lock:
            self.requests.append((rel, rng, status))



# -- bundles, repositories, measured installs ---------------------------------------------------------
def _bench_ota():
    spec = importlib.util.spec_from_file_location("bench_ota_model", ROOT / "bench" / "ota.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def make_bundles(tmp: Path, payload_mb: float) -> Tuple[Path, Path, Dict[str, Any]]:
    """(small bundle, big bundle = small + a payload file of ``payload_mb`` MB, model facts)."""
    import numpy as np

    from edgeuq_runtime import load_bundle, write_bundle

    ota = _bench_ota()
    rng = np.random.default_rng(0)
    w = {"W1": rng.standard_normal((ota.L, ota.H)) / np.sqrt(ota.L), "W2": rng.standard_normal((ota.H, ota.F)) / np.sqrt(ota.H),
         "V1": rng.standard_normal((ota.F, ota.F)) / np.sqrt(ota.F), "V2": rng.standard_normal((ota.F, ota.C)) / np.sqrt(ota.F)}
    w = {k: v.astype(np.float32) for k, v in w.items()}
    windows = rng.standard_normal((8, ota.L)).astype(np.float32)
    small = ota.build(tmp, "small", w, False, "1.0", windows)
    payload = tmp / "extra.bin"
    left = int(payload_mb * (1 << 20))
    with open(payload, "wb") as fh:
        prng = np.random.default_rng(1)
        while left > 0:
            n = min(8 << 20, left)
            fh.write(prng.bytes(n))
            left -= n
    m = load_bundle(small, verify=True).manifest
    sources = {name: small / name for name in m.files}
    sources[PAYLOAD] = payload
    big = write_bundle(tmp / "big", dataclasses.replace(m, files={}), sources).root
    payload.unlink()
    facts = {"board": ota.BOARD, "model": ota.MODEL, "small_bytes": _size(small), "big_bytes": _size(big)}
    return small, big, facts


def _size(bundle: Path) -> int:
    return sum(p.stat().st_size for p in Path(bundle).rglob("*") if p.is_file())


def publish(bundle: Path, repo: Path, keys: Path, board: str) -> int:
    from edgeuq.ota.publish import publish_bundle

    return publish_bundle(bundle, repo, keys, board).full_bytes


# A minimal launcher (no site, os/json/time only): it forks and execs the updater and reports
# the child's ru_maxrss from wait4. Linux counts the memory a child held *before* exec (a copy of
# its parent) in its ru_maxrss, so the updater must not be forked from this (big) process: here
# the pre-exec copy is the launcher's ~10 MB, far below the updater's own peak. As a cross-check
# the launcher also samples the child's VmHWM (/proc/PID/status) every 10 ms.
LAUNCHER = r"""
import json, os, sys, time
argv = json.loads(sys.argv[1])
out = os.open(sys.argv[2], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
err = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
pid = os.fork()
if pid == 0:
    os.dup2(out, 1)
    os.dup2(err, 2)
    try:
        os.execv(argv[0], argv)
    finally:
        os._exit(127)
hwm = 0
while True:  # cross-check: the child's VmHWM sampled every 10 ms (a lower bound of its peak)
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    hwm = max(hwm, int(line.split()[1]))
    except OSError:
        pass
    done, status, ru = os.wait4(pid, os.WNOHANG)
    if done:
        break
    time.sleep(0.01)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "maxrss_kb": ru.ru_maxrss, "hwm_sampled_kb": hwm}))
"""


def install_rss(repo_url: str, repo_dir: Path, dev: Path, board: str, model: str, timeout: float = 900.0
                ) -> Dict[str, Any]:
    """One ``python -m edgeuq_runtime update`` child on a fresh device; its peak RSS (wait4)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "runtime"), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "edgeuq_runtime", "update", "--root", str(dev), "--repo", repo_url, "--board", board,
           "--model", model, "--trust-root", str(repo_dir / "metadata" / "1.root.json"), "--json"]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as logs:
        out, err = Path(logs) / "out", Path(logs) / "err"
        res = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, json.dumps(cmd), str(out), str(err)],
                             env=env, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    if res.returncode != 0:
        raise RuntimeError(f"launcher failed (exit {res.returncode}): {res.stderr[-2000:]}")
    usage = json.loads(res.stdout)
    if usage["exit"] != 0:
        raise RuntimeError(f"update child failed (exit {usage['exit']}): {stderr[-2000:]}")
    rec = json.loads(stdout)
    if rec.get("status") != "installed":
        raise RuntimeError(f"update child did not install: {rec}")
    return {"peak_rss_mb": usage["maxrss_kb"] / 1024.0, "vmhwm_sampled_mb": usage["hwm_sampled_kb"] / 1024.0,
            "seconds": seconds, "release": rec["release"], "fetched_bytes": rec["bytes"],
            "download": rec.get("download", {}), "slot": rec["slot"]}


def verify_install(dev: Path, bundle: Path) -> bool:
    """The installed slot holds exactly the published bundle's files (sha256 of each)."""
    from edgeuq_runtime import load_bundle
    from edgeuq_runtime.ota import current_bundle

    served = current_bundle(dev)
    got = load_bundle(served, verify=True)
    want = load_bundle(bundle, verify=False)
    return got.digest == hashlib.sha256((Path(bundle) / "manifest.json").read_bytes()).hexdigest() and \
        dict(got.manifest.files) == dict(want.manifest.files)


def measure(tmp: Path, payload_mb: float, pairs: int, drops: int, seed: int = 0, log=print) -> Dict[str, Any]:
    """Build, publish, serve; ``pairs`` x (small install, big install) in random order per pair."""
    small, big, facts = make_bundles(tmp, payload_mb)
    _bench_ota().throwaway_keys(tmp / "keys")
    repos = {"small": tmp / "repo-small", "big": tmp / "repo-big"}
    archive = {name: publish(b, repos[name], tmp / "keys", facts["board"]) for name, b in
               (("small", small), ("big", big))}
    bundles = {"small": small, "big": big}
    log(f"archives: small {archive['small'] / 1e6:.2f} MB, big {archive['big'] / 1e6:.2f} MB")
    order_rng = random.Random(seed)
    runs: List[Dict[str, Any]] = []
    for i in range(pairs):
        order = ["small", "big"]
        order_rng.shuffle(order)
        pair: Dict[str, Any] = {"pair": i, "order": order}
        for which in order:
            with RangeRepoServer(repos[which]) as srv:
                if which == "big" and drops:
                    srv.drops["r1.tar"] = drops
                dev = tmp / f"dev-{i}-{which}"
                rec = install_rss(srv.url, repos[which], dev, facts["board"], facts["model"])
                rec["ranged_requests"] = sum(1 for r in srv.requests if r[1] and r[2] == 206)
            rec["verified"] = verify_install(dev, bundles[which])
            shutil.rmtree(dev)
            pair[which] = rec
            log(f"  pair {i} {which}: peak RSS {rec['peak_rss_mb']:.1f} MB (sampled VmHWM {rec['vmhwm_sampled_mb']:.1f} MB), "
                f"{rec['seconds']:.1f} s, "
                f"resumes {rec['download'].get('resumes')}, verified {rec['verified']}")
        pair["extra_mb"] = pair["big"]["peak_rss_mb"] - pair["small"]["peak_rss_mb"]
        runs.append(pair)
    worst = max(p["extra_mb"] for p in runs)
    return {"payload_mb": payload_mb, "archive_bytes": archive, "bundle_bytes": {"small": facts["small_bytes"],
            "big": facts["big_bytes"]}, "drops": drops, "pairs": runs, "extra_mb_max": worst,
            "bound_mb": BOUND_MB, "met": bool(worst < BOUND_MB and all(p[w]["verified"] for p in runs
                                                                        for w in ("small", "big")))}


def table(doc: Dict[str, Any]) -> Tuple[List[str], List[List[str]]]:
    hdr = ["bundle", "archive", "peak RSS (max of pairs)", "install s (median)", "extra peak RSS vs small",
           "resumes", f"< {doc['bound_mb']:g} MB"]
    rows = []
    for which in ("small", "big"):
        peaks = [p[which]["peak_rss_mb"] for p in doc["pairs"]]
        secs = [p[which]["seconds"] for p in doc["pairs"]]
        extra = "-" if which == "small" else f"{doc['extra_mb_max']:.1f} MB (worst pair)"
        resumes = max(p[which]["download"].get("resumes", 0) for p in doc["pairs"])
        met = "-" if which == "small" else ("yes" if doc["met"] else "NO")
        rows.append([which if which == "small" else f"big (+{doc['payload_mb']:g} MB payload file)",
                     f"{doc['archive_bytes'][which] / 1e6:.1f} MB", f"{max(peaks):.1f} MB",
                     f"{statistics.median(secs):.1f}", extra, str(resumes), met])
    return hdr, rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--payload-mb", type=float, default=500.0)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--drops", type=int, default=1,
                    help="cut the big download this many times mid-body, resumed with Range (default 1; 0: never)")
    ap.add_argument("--quick", action="store_true", help="64 MB payload, 1 pair (mode quick)")
    ap.add_argument("--json", type=Path, default=Path("results/ota_stream_memory.json"))
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    a = ap.parse_args(argv)
    from edgeuq.provenance import command_line, start, write_results
    from edgeuq.report import format_table, results_table

    if a.quick:
        a.payload_mb, a.pairs = min(a.payload_mb, 64.0), 1
    if a.pairs < 1 or not a.payload_mb > 0:
        ap.error("--pairs must be >= 1 and --payload-mb > 0")
    prov = start("quick" if a.quick else "full", 1, packages=("numpy", "onnxruntime", "tuf"),
                 note=f"{a.pairs} pair(s) small/big in random order; peak RSS = ru_maxrss of each update child")
    command = command_line("bench/ota_stream_memory.py", argv)
    if a.work is not None:
        a.work.mkdir(parents=True, exist_ok=True)
        ctx = tempfile.TemporaryDirectory(dir=a.work)
    else:
        ctx = tempfile.TemporaryDirectory()
    with ctx as tmp:
        doc = measure(Path(tmp), a.payload_mb, a.pairs, a.drops)
    hdr, rows = table(doc)
    print(format_table(hdr, rows))
    print(f"\n(real `python -m edgeuq_runtime update` children over HTTP on 127.0.0.1; peak RSS = ru_maxrss from "
          f"wait4; the big bundle is the small model plus a {a.payload_mb:g} MB data file listed in manifest.files, "
          "not weights the graphs load; extra = big - small per pair)")
    note = (f"Real `python -m edgeuq_runtime update` children over HTTP on 127.0.0.1, {a.pairs} pair(s) in random "
            f"order; peak RSS = ru_maxrss (wait4). The big bundle is the small synthetic model plus a "
            f"{a.payload_mb:g} MB data file listed in manifest.files (not weights the graphs load)"
            + (f"; its download was cut {a.drops} time(s) mid-body and resumed with Range" if a.drops else "") + ".")
    write_results(a.json, results_table(hdr, rows, note=note, measurement=doc), command, prov)
    print(f"wrote {a.json}")
    return 0 if doc["met"] else 1


if __name__ == "__main__":
    sys.exit(main())
