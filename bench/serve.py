#!/usr/bin/env python3
"""The live view's cost and robustness (issue 25), written to results/serve.json.

1. **Overhead** at 10 decisions/s with 5 open pages: the streaming loop alone (records
   JSON-encoded to /dev/null, as ``stream`` does) vs the loop + hub + HTTP/SSE server with
   5 SSE readers (in another process, so their CPU is not counted). Each run is a fresh
   process of ``--seconds`` (after a warm-up); runs come in pairs, the order within each
   pair random; per pair: CPU % of one core (process user+sys time / wall) and RSS.
   Reported: the paired differences (server − plain), their median and range.
2. **Page latency**: decision record (``time``, stamped when the decision is made) to the
   DOM updated in headless Chromium (window.edgeuq.latency, same machine clock); only
   when chromium + chromedriver + selenium are installed, else "not measured".
3. **Soak** (``--soak-seconds``; minutes, not the issue's hour — say so): the server
   with a simulated source that stalls and ends (re-opened), and a churn of clients
   connecting, reading, stalling without reading, dropping abruptly, fetching bad paths.
   Counted: server handler errors, loop errors, whether the loop is alive, RSS growth.

The model is the runtime tests' tiny two-graph ONNX bundle (window 16 at 160 Hz: a hop
every 0.1 s); the source is the *simulated* sensor. The goal is the server's overhead,
which does not depend on the model's cost.

    python bench/serve.py --json results/serve.json               # ~10 min on a quiet 2-core box
    python bench/serve.py --pairs 1 --seconds 20 --soak-seconds 30  # smoke
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "runtime"), str(ROOT / "runtime" / "tests")]

RATE, LENGTH = 160.0, 16          # 10 decisions per second


def _rss_kb(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def build_bundle(out: Path) -> Path:
    import numpy as np
    from edgeuq_runtime import InputSpec, write_bundle
    from rt_helpers import C, F, L, make_head, make_manifest, make_trunk

    rng = np.random.default_rng(1234)
    (out / "src").mkdir(parents=True, exist_ok=True)
    sources = {"trunk.onnx": make_trunk(out / "src" / "trunk.onnx", rng.standard_normal((L, F)).astype(np.float32)),
               "head.onnx": make_head(out / "src" / "head.onnx", rng.standard_normal((F, C)).astype(np.float32))}
    return write_bundle(out / "bundle", make_manifest(input=InputSpec(length=L, sample_rate_hz=RATE)),
                        sources).root


def _diagnoser(bundle: Path):
    from edgeuq_runtime import UncertaintyRuntime
    from edgeuq_runtime.stream import Diagnoser

    return Diagnoser(UncertaintyRuntime(bundle, threads=1), samples=16, seed=0)


# ---------------- children ----------------

def child_plain(bundle: Path, seconds: float, warmup: float) -> dict:
    from edgeuq_runtime.stream import Hysteresis, SimSource, run_stream

    diag = _diagnoser(bundle)
    sink = open(os.devnull, "w")
    marks = {}
    t_start = time.monotonic()

    def emit(rec):
        sink.write(json.dumps(rec, allow_nan=False, default=str) + "\n")
        now = time.monotonic()
        if "t0" not in marks and now - t_start >= warmup:
            marks.update(t0=now, cpu0=_cpu(), rss0=_rss_kb())

    src = SimSource("inner_race", RATE, realtime=True, max_seconds=warmup + seconds)
    stats = run_stream(diag, src, emit, alarm=Hysteresis(3, 5, "rest"))
    t1, cpu1 = time.monotonic(), _cpu()
    return {"wall_s": t1 - marks["t0"], "cpu_s": cpu1 - marks["cpu0"], "rss_kb": _rss_kb(),
            "rss0_kb": marks["rss0"], "hwm_kb": _rss_kb("VmHWM"), "windows": stats.windows}


def child_serve(bundle: Path, seconds: float, warmup: float, clients: int) -> dict:
    from edgeuq_runtime.serve import Hub, LiveServer
    from edgeuq_runtime.serve.live import LiveFeed
    from edgeuq_runtime.stream import Hysteresis, SimSource

    diag = _diagnoser(bundle)
    hub = Hub()
    srv = LiveServer(hub, "127.0.0.1", 0)
    srv.start()
    feed = LiveFeed(hub, diag, lambda: SimSource("inner_race", RATE, realtime=True, max_seconds=warmup + seconds + 2),
                    alarm=Hysteresis(3, 5, "rest"))
    readers = subprocess.Popen([sys.executable, __file__, "--child", "readers", "--port", str(srv.port),
                                "--clients", str(clients), "--seconds", str(warmup + seconds + 30)],
                               stdout=subprocess.PIPE, text=True)
    t = threading.Thread(target=feed.run, daemon=True)
    t_end = time.monotonic() + 20
    while hub.clients < clients and time.monotonic() < t_end:
        time.sleep(0.05)
    if hub.clients < clients:
        raise RuntimeError(f"only {hub.clients} of {clients} SSE readers connected")
    t.start()
    time.sleep(warmup)
    t0, cpu0, rss0 = time.monotonic(), _cpu(), _rss_kb()
    time.sleep(seconds)
    t1, cpu1, rss1 = time.monotonic(), _cpu(), _rss_kb()
    open_pages = hub.clients
    feed.stop()
    t.join(10)
    readers.terminate()
    out, _ = readers.communicate(timeout=30)
    srv.stop()
    lat = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"wall_s": t1 - t0, "cpu_s": cpu1 - cpu0, "rss_kb": rss1, "rss0_kb": rss0, "hwm_kb": _rss_kb("VmHWM"),
            "windows": hub.stats.windows, "open_pages": open_pages, "dropped": hub.dropped_clients,
            "server_errors": srv.errors, "sse_delivery": lat}


def child_readers(port: int, clients: int, seconds: float) -> None:
    """``clients`` SSE readers; on SIGTERM print the decision -> socket delivery latencies."""
    import signal

    lat = []
    socks = []
    for _ in range(clients):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        socks.append(s)

    def read(s):
        buf = b""
        while True:
            try:
                chunk = s.recv(65536)
            except OSError:
                return
            if not chunk:
                return
            now = time.time()
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                if block.startswith(b"data: {\"class\"") or b'"type":"decision"' in block:
                    try:
                        rec = json.loads(block[6:])
                        lat.append(now - rec["time"])
                    except (ValueError, KeyError):
                        pass

    for s in socks:
        threading.Thread(target=read, args=(s,), daemon=True).start()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    done.wait(seconds)
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3, 3) if lat else None  # noqa: E731
    print(json.dumps({"n": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}), flush=True)


def _run_child(args: list) -> dict:
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, timeout=1200)
    if p.returncode != 0:
        raise RuntimeError(f"child {args[:2]} failed: {p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def overhead(bundle: Path, pairs: int, seconds: float, warmup: float, clients: int, seed: int) -> dict:
    rng = random.Random(seed)
    rows = []
    for i in range(pairs):
        order = ["plain", "serve"]
        rng.shuffle(order)
        res = {}
        for mode in order:
            extra = ["--clients", str(clients)] if mode == "serve" else []
            res[mode] = _run_child(["--child", mode, "--bundle", str(bundle), "--seconds", str(seconds),
                                    "--warmup", str(warmup), *extra])
            print(f"pair {i + 1}/{pairs} {mode}: cpu {100 * res[mode]['cpu_s'] / res[mode]['wall_s']:.2f} %, "
                  f"rss {res[mode]['rss_kb'] / 1024:.1f} MB", file=sys.stderr, flush=True)
        cpu = {m: 100 * r["cpu_s"] / r["wall_s"] for m, r in res.items()}
        rows.append({"order": order, "cpu_plain_pct": cpu["plain"], "cpu_serve_pct": cpu["serve"],
                     "cpu_overhead_pct": cpu["serve"] - cpu["plain"],
                     "rss_plain_mb": res["plain"]["rss_kb"] / 1024, "rss_serve_mb": res["serve"]["rss_kb"] / 1024,
                     "rss_overhead_mb": (res["serve"]["rss_kb"] - res["plain"]["rss_kb"]) / 1024,
                     "rss_growth_serve_mb": (res["serve"]["rss_kb"] - res["serve"]["rss0_kb"]) / 1024,
                     "windows_plain": res["plain"]["windows"], "windows_serve": res["serve"]["windows"],
                     "open_pages": res["serve"]["open_pages"], "dropped": res["serve"]["dropped"],
                     "server_errors": res["serve"]["server_errors"], "sse_delivery": res["serve"]["sse_delivery"]})
    cpu_d = [r["cpu_overhead_pct"] for r in rows]
    rss_d = [r["rss_overhead_mb"] for r in rows]
    return {"pairs": rows, "cpu_overhead_pct_median": statistics.median(cpu_d), "cpu_overhead_pct_range":
            [min(cpu_d), max(cpu_d)], "rss_overhead_mb_median": statistics.median(rss_d),
            "rss_overhead_mb_range": [min(rss_d), max(rss_d)], "seconds_per_run": seconds, "clients": clients,
            "decisions_per_s": RATE / LENGTH}


def dom_latency(bundle: Path, seconds: float) -> dict:
    import shutil

    chromium, driver = shutil.which("chromium") or shutil.which("chromium-browser"), shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (chromium and driver and webdriver):
        return {"measured": False, "why": "not measured: chromium/chromedriver/selenium missing "
                                          "(scripts/setup_browser.sh, runtime test extra)"}
    from edgeuq_runtime.serve import Hub, LiveServer
    from edgeuq_runtime.serve.live import LiveFeed
    from edgeuq_runtime.stream import Hysteresis, SimSource

    hub = Hub()
    srv = LiveServer(hub, "127.0.0.1", 0)
    srv.start()
    feed = LiveFeed(hub, _diagnoser(bundle), lambda: SimSource("inner_race", RATE, realtime=True),
                    alarm=Hysteresis(3, 5, "rest"))
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,1000"):
        opts.add_argument(a)
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    t = threading.Thread(target=feed.run, daemon=True)
    try:
        drv.get(srv.url())
        t.start()
        time.sleep(seconds)
        lat = sorted(drv.execute_script("return window.edgeuq.latency.slice()"))
    finally:
        drv.quit()
        feed.stop()
        t.join(10)
        srv.stop()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3, 3) if lat else None  # noqa: E731
    return {"measured": True, "n": len(lat), "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0),
            "browser": "headless Chromium (Debian) via chromedriver", "goal_ms": 200}


class _StallingSource:
    """The simulated sensor that stalls for ``stall`` s every ``every`` s and ends after ``life`` s."""

    simulated = True

    def __init__(self, life: float, every: float = 25.0, stall: float = 3.0) -> None:
        from edgeuq_runtime.stream import SimSource

        self._sim = SimSource(random.choice(["normal", "inner_race", "ball"]), RATE, realtime=True)
        self.rate, self.description = RATE, "simulated sensor with stalls and restarts (soak)"
        self._t0, self.life, self.every, self.stall = time.monotonic(), life, every, stall
        self._stalled = False

    def read(self, n):
        from edgeuq_runtime.stream import Chunk
        import numpy as np

        age = time.monotonic() - self._t0
        if age > self.life:
            return Chunk(np.zeros(0, np.float32), time.monotonic(), "eof")
        if age % self.every > self.every - self.stall:
            time.sleep(0.5)
            self._stalled = True
            return Chunk(np.zeros(0, np.float32), time.monotonic(), "stalled", "soak: simulated stall")
        if self._stalled:   # the producer comes back: pacing restarts from now
            from edgeuq_runtime.stream import SimSource

            self._sim, self._stalled = SimSource(self._sim._sensor.kind, RATE, realtime=True), False
        return self._sim.read(n)

    def close(self):
        pass


def child_churn(port: int, seconds: float, seed: int) -> None:
    rng = random.Random(seed)
    counts = {}
    t_end = time.monotonic() + seconds

    def one():
        kind = rng.choice(["sse", "sse", "slow", "abrupt", "state", "page", "bad"])
        counts[kind] = counts.get(kind, 0) + 1
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            if kind == "bad":
                target = rng.choice(["/../../etc/passwd", "/%2e%2e/etc/passwd", "/etc/passwd", "/x" * 500])
                s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                s.recv(4096)
            elif kind in ("state", "page"):
                path = "/state" if kind == "state" else "/"
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
                while s.recv(65536):
                    pass
            else:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
                if kind == "sse":
                    end = time.monotonic() + rng.uniform(0.5, 8)
                    while time.monotonic() < end and s.recv(65536):
                        pass
                elif kind == "slow":
                    time.sleep(rng.uniform(5, 90))   # the longer ones overflow socket buffer + queue: dropped
                else:   # abrupt: RST instead of FIN
                    s.recv(100)
                    import struct
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        except OSError as exc:
            counts["client_oserror"] = counts.get("client_oserror", 0) + 1
            counts.setdefault("client_oserror_kinds", {})
            counts["client_oserror_kinds"][type(exc).__name__] = counts["client_oserror_kinds"].get(
                type(exc).__name__, 0) + 1

    threads = []
    while time.monotonic() < t_end:
        threads = [t for t in threads if t.is_alive()]
        if len(threads) < 8:
            t = threading.Thread(target=one, daemon=True)
            t.start()
            threads.append(t)
        time.sleep(rng.uniform(0.02, 0.3))
    for t in threads:
        t.join(15)
    print(json.dumps(counts), flush=True)


def soak(bundle: Path, seconds: float) -> dict:
    from edgeuq_runtime.serve import Hub, LiveServer
    from edgeuq_runtime.serve.live import LiveFeed
    from edgeuq_runtime.stream import Hysteresis

    hub = Hub()
    srv = LiveServer(hub, "127.0.0.1", 0)
    srv.start()
    feed = LiveFeed(hub, _diagnoser(bundle), lambda: _StallingSource(life=60.0), alarm=Hysteresis(3, 5, "rest"),
                    reopen=True)
    t = threading.Thread(target=feed.run, daemon=True)
    t.start()
    time.sleep(5)
    rss0 = _rss_kb()
    churn = subprocess.Popen([sys.executable, __file__, "--child", "churn", "--port", str(srv.port),
                              "--seconds", str(seconds)], stdout=subprocess.PIPE, text=True)
    rss_trace = []
    t_end = time.monotonic() + seconds
    while time.monotonic() < t_end:
        time.sleep(min(10.0, max(0.1, t_end - time.monotonic())))
        rss_trace.append(round(_rss_kb() / 1024, 2))
    out, _ = churn.communicate(timeout=120)
    time.sleep(3)
    alive = t.is_alive()
    statuses = [json.loads(h) for h in list(hub._history) if '"type":"status"' in h]
    res = {"seconds": seconds, "note": "a few minutes of soak, not the issue's hour", "loop_alive": alive,
           "server_errors": srv.errors, "client_disconnects": srv.disconnects, "loop_errors": hub.stats.errors,
           "windows": hub.stats.windows, "dropped_slow_clients": hub.dropped_clients,
           "slow_clients_cut_by_write_timeout": srv.write_timeouts,
           "open_pages_after": hub.clients, "restarts": sum(s.get("event") == "restarted" for s in statuses),
           "stall_records": sum(s.get("event") == "stalled" for s in statuses),
           "rss_start_mb": round(rss0 / 1024, 2), "rss_end_mb": round(_rss_kb() / 1024, 2), "rss_trace_mb": rss_trace,
           "client_actions": json.loads(out.strip().splitlines()[-1]) if out.strip() else {}}
    res["crashes"] = int(not alive) + srv.errors + hub.stats.errors
    feed.stop()
    t.join(10)
    srv.stop()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--dom-seconds", type=float, default=20.0)
    ap.add_argument("--soak-seconds", type=float, default=180.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", choices=["plain", "serve", "readers", "churn"])
    ap.add_argument("--bundle")
    ap.add_argument("--port", type=int)
    ap.add_argument("--quick", action="store_true", help="1 pair of 20 s runs, 10 s of DOM timing, a 60 s soak "
                                                        "(mode quick)")
    a = ap.parse_args(argv)
    if a.child == "plain":
        print(json.dumps(child_plain(Path(a.bundle), a.seconds, a.warmup)))
        return 0
    if a.child == "serve":
        print(json.dumps(child_serve(Path(a.bundle), a.seconds, a.warmup, a.clients)))
        return 0
    if a.child == "readers":
        child_readers(a.port, a.clients, a.seconds)
        return 0
    if a.child == "churn":
        child_churn(a.port, a.seconds, a.seed)
        return 0
    from edgeuq.provenance import command_line, finish, start
    from edgeuq.report import results_table

    if a.quick:
        a.pairs, a.seconds, a.dom_seconds, a.soak_seconds = 1, 20.0, 10.0, 60.0
    prov = start("quick" if a.quick else "full", 1)
    cmd = command_line("bench/serve.py", argv)
    with tempfile.TemporaryDirectory(prefix="edgeuq-bench-serve-") as tmp:
        bundle = build_bundle(Path(tmp))
        ov = overhead(bundle, a.pairs, a.seconds, a.warmup, a.clients, a.seed)
        dom = dom_latency(bundle, a.dom_seconds)
        sk = soak(bundle, a.soak_seconds) if a.soak_seconds > 0 else {"measured": False}
    p = finish(prov, note="tiny ONNX bundle, SIMULATED sensor")
    goals = {"cpu_overhead_pct": 2.0, "rss_overhead_mb": 5.0, "page_latency_ms": 200.0, "crashes": 0}
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    rows = [["server CPU overhead (% of one core), median of pairs",
             f"{ov['cpu_overhead_pct_median']:.2f} (range {ov['cpu_overhead_pct_range'][0]:.2f} to "
             f"{ov['cpu_overhead_pct_range'][1]:.2f})", "≤ 2", met(ov["cpu_overhead_pct_median"] <= 2.0)],
            ["server RSS overhead (MB), median of pairs",
             f"{ov['rss_overhead_mb_median']:.2f} (range {ov['rss_overhead_mb_range'][0]:.2f} to "
             f"{ov['rss_overhead_mb_range'][1]:.2f})", "≤ 5", met(ov["rss_overhead_mb_median"] <= 5.0)]]
    d = [r["sse_delivery"] for r in ov["pairs"] if r["sse_delivery"].get("n")]
    if d:
        rows.append(["decision → SSE socket (ms), p50 / p99", f"{statistics.median(x['p50_ms'] for x in d):.2f} / "
                     f"{max(x['p99_ms'] for x in d):.2f}", "–", "–"])
    if dom.get("measured"):
        rows.append(["decision → DOM in headless Chromium (ms), p50 / p99 / max",
                     f"{dom['p50_ms']:.1f} / {dom['p99_ms']:.1f} / {dom['max_ms']:.1f} (n={dom['n']})", "≤ 200",
                     met(dom["p99_ms"] is not None and dom["p99_ms"] <= 200)])
    else:
        rows.append(["decision → DOM in headless Chromium", dom["why"], "≤ 200", "not measured"])
    if sk.get("seconds"):
        rows.append([f"soak {sk['seconds'] / 60:.0f} min (not 1 h): crashes", f"{sk['crashes']} ({sk['windows']} windows, "
                     f"{sum(v for k, v in sk['client_actions'].items() if isinstance(v, int) and k != 'client_oserror')}"
                     f" client sessions; slow pages: {sk['dropped_slow_clients']} dropped for a full queue, "
                     f"{sk['slow_clients_cut_by_write_timeout']} cut by the 5 s write timeout; {sk['restarts']} source "
                     f"restarts; RSS {sk['rss_start_mb']:.1f} → {sk['rss_end_mb']:.1f} MB)", "0 over 1 h",
                     "met for the minutes run" if sk["crashes"] == 0 else "NOT met"])
    doc = {"command": cmd, "provenance": p, "goals": goals, "overhead": ov,
           "dom_latency": dom, "soak": sk,
           "tables": {"serve": results_table(
               ["measure", "value", "goal", "status"], rows,
               note=f"10 decisions/s, {a.clients} open SSE pages, {a.pairs} interleaved pairs of "
                    f"{a.seconds:g} s runs (random order within a pair); CPU and RSS are the "
                    "serving process's; readers and browser run in other processes.")}}
    text = json.dumps(doc, indent=2)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(text + "\n")
    for r in rows:
        print(" | ".join(str(c) for c in r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
